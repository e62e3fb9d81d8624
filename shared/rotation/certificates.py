"""Certificate self-rotation: a new key pair and self-signed certificate, and the proofs of possession Graph's
``addKey`` and ``removeKey`` ask for; the roll that uses them (:class:`CertificateRoll`).

The new key is RSA of 3072 bits, whatever the size of the one in use (3072 is the size recommended past 2030, and
within what the service accepts; Entra ID takes RSA certificates only). The
certificate is self-signed (Entra trusts the key it was given, not a chain), its subject the application's
client ID, valid from a few minutes ago (clock skew) to the rotation's end date. Key generation (about 0.1 to
1 s for RSA 3072) and signing run in a worker thread, never on the event loop.

A proof is a JWT signed with a certificate the application already has (the one in use for ``addKey``; the one
in use *after* a rotation for ``removeKey``): ``aud`` Graph's application id, ``iss`` the application's object
id, ``nbf`` now and ``exp`` ten minutes later, with the signing certificate's thumbprints in the header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.apps import Method
from shared.credentials import ParsedCertificate, parse_certificate, signed_jwt
from shared.rotation.rolls import Rolled, SignInRoll, Successor

if TYPE_CHECKING:
    from shared.ports import AppRegistration, GraphSession, LifetimePolicy, Lost

RSA_BITS = 3072
PROOF_LIFETIME_SECONDS = 600
GRAPH_AUDIENCE = "00000002-0000-0000-c000-000000000000"
BACKDATE = timedelta(minutes=5)  # notBefore this much before now: a verifier whose clock is behind accepts it


@dataclass(frozen=True)
class NewCertificate:
    """A freshly made key pair and its self-signed certificate, as the certificate method stores them."""

    certificate_pem: str
    private_key_pem: str = field(repr=False)
    certificate_der: bytes
    not_after: datetime

    @property
    def material(self) -> dict[str, str]:
        return {"certificateBody": self.certificate_pem, "privateKey": self.private_key_pem}


def new_rsa_key() -> rsa.RSAPrivateKey:
    """A new RSA key of :data:`RSA_BITS` (about 0.1 to 1 s of CPU)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def new_certificate(current: ParsedCertificate, subject: str, not_after: datetime,
                    now: datetime | None = None) -> NewCertificate:
    """A new RSA key of :data:`RSA_BITS` and a self-signed certificate for it, valid until ``not_after``, to
    succeed ``current`` (an RSA certificate: the only kind :func:`parse_certificate` admits). CPU-heavy: call
    :func:`new_certificate_async` on the loop."""
    if current.key_type != "RSA":
        raise ValueError("the certificate in use has a key that is not RSA")
    key = new_rsa_key()
    now = now or datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64] or "app-connections")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return NewCertificate(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        private_key_pem=private_pem.decode("ascii"),
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        not_after=certificate.not_valid_after_utc,
    )


async def new_certificate_async(current: ParsedCertificate, subject: str, not_after: datetime) -> NewCertificate:
    return await asyncio.to_thread(new_certificate, current, subject, not_after)


def proof_of_possession(signer: ParsedCertificate, object_id: str, now: float | None = None) -> str:
    """The ``proof`` of an ``addKey`` / ``removeKey`` call on the application ``object_id``, signed by
    ``signer`` (a certificate the application has)."""
    issued = int(time.time() if now is None else now)
    return signed_jwt(signer, {"aud": GRAPH_AUDIENCE, "iss": object_id, "nbf": issued,
                               "exp": issued + PROOF_LIFETIME_SECONDS})


def _parsed(material: Mapping[str, str], now: datetime) -> ParsedCertificate:
    return parse_certificate(material.get("certificateBody", ""), material.get("privateKey", ""), now)


async def proof_async(material: Mapping[str, str], object_id: str, now: datetime) -> str:
    """:func:`proof_of_possession` by the certificate of a vault version's material (checked as of ``now``), in a
    worker thread."""
    return await asyncio.to_thread(lambda: proof_of_possession(_parsed(material, now), object_id))


def _certificate(material: Mapping[str, str]) -> x509.Certificate | None:
    """The certificate of a vault version's material, None when it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(material.get("certificateBody", "").encode())
    except (ValueError, x509.InvalidVersion):
        return None


def _thumbprint(material: Mapping[str, str]) -> str | None:
    """The SHA-1 thumbprint (upper-case hex) of a vault version's certificate, None when it cannot be read."""
    import hashlib

    certificate = _certificate(material)
    if certificate is None:
        return None
    return hashlib.sha1(certificate.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest().upper()


async def ends_async(material: Mapping[str, str]) -> datetime | None:
    """When the certificate of a vault version's material ends (its notAfter), None when it cannot be read; in a
    worker thread."""
    def end() -> datetime | None:
        certificate = _certificate(material)
        return certificate.not_valid_after_utc if certificate is not None else None

    return await asyncio.to_thread(end)


class CertificateRoll(SignInRoll):
    """Certificates: ``addKey`` with a proof signed by the certificate in use, ``removeKey`` with a proof signed by
    the certificate in use when it runs (the successor's, at the revoke step). No Graph permission is needed: an
    application may roll its own keys."""

    method = Method.CERTIFICATE
    noun = "certificate"

    def max_lifetime(self, policy: LifetimePolicy) -> timedelta | None:
        return policy.key_max_lifetime

    def addition_refused(self, policy: LifetimePolicy) -> bool:
        return False

    def rolled(self, registration: AppRegistration) -> Sequence[Rolled]:
        return [Rolled(k.key_id, k.display_name) for k in registration.keys]

    def identify(self, registration: AppRegistration, material: Mapping[str, str]) -> str | None:
        """The sign-in key whose thumbprint is the certificate's (``customKeyIdentifier``). Not one for token
        encryption (usage ``Encrypt``): the same certificate may be on the application for both, and removing that
        one would break token encryption and leave the sign-in key live."""
        thumbprint = _thumbprint(material)
        if thumbprint is None:
            return None
        return next((k.key_id for k in registration.keys if (k.thumbprint or "").upper() == thumbprint
                     and (k.usage or "Verify").lower() == "verify"), None)

    def may_be_same(self, one: Mapping[str, str], other: Mapping[str, str]) -> bool:
        """The same certificate (its thumbprint, which the application shows whole)."""
        mine = _thumbprint(one)
        return mine is not None and mine == _thumbprint(other)

    async def add_successor(self, graph: GraphSession, registration: AppRegistration, display_name: str,
                            end: datetime, current: Mapping[str, str], now: datetime,
                            fence: Callable[[], None], lost: Lost) -> Successor:
        def make() -> tuple[NewCertificate, str]:
            in_use = _parsed(current, now)
            made = new_certificate(in_use, registration.app_id, end, now)
            return made, proof_of_possession(in_use, registration.object_id)

        made, proof = await asyncio.to_thread(make)
        fence()
        added = await graph.add_key(registration.object_id, display_name, made.certificate_der, proof)
        return Successor(added.key_id, made.material, added.end_date_time or made.not_after)

    async def remove_predecessor(self, graph: GraphSession, registration: AppRegistration, key_id: str,
                                 signer: Mapping[str, str], now: datetime) -> None:
        proof = await proof_async(signer, registration.object_id, now)
        await graph.remove_key(registration.object_id, key_id, proof)
