"""A credential per method, certificate and key parsing, and token acquisition.

The private key of a certificate connection never leaves the service: it signs the client assertion
here (RS256 with ``x5t`` and ``x5t#S256``), and azure-identity's ``ClientAssertionCredential`` sends it.

Keys are RSA, bounded before any costly work (issue 12): 2048 to 4096 bits. Entra ID signs no client in with
an elliptic-curve key (its certificate credentials are RSA: RS256 or PS256; an ES256 assertion is refused,
AADSTS5002738), so an EC certificate is refused at once, with the reason, rather than at Entra's door.
The certificate's public key (cheap to read) is checked first, and the private key's PEM text is
bounded in length, so that an over-size key is refused without being parsed. The private key is then
loaded without OpenSSL's RSA key check, whose primality tests cost about 0.5 s for a 4096-bit key
(5 s at 8192 bits, 19 s at 15360) *while holding the GIL*, so that no thread can keep it off the
event loop. What that check guarantees is checked here instead, cheaply: the key's public half is
the certificate's, its numbers are consistent and no longer than the modulus, and a signature it
makes verifies with the certificate's key. Parsing and signing then run in a worker thread
(``parse_certificate_async``, ``build_credential_async``, ``acquire_token``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shared.apps import AppSpec, Method
from shared.errors import (
    CredentialExpired,
    CredentialRejected,
    FieldError,
    InvalidRequest,
    UpstreamError,
    UpstreamThrottled,
)
from shared.federation import SERVICE_APPLICATION, require_identity, service_applications

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.azure.clients import AzureClients

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
# A 4096-bit RSA key is about 3.3 KB of PEM (PKCS#8 or PKCS#1); an 8192-bit one about 6.4 KB. Anything longer
# than this is refused before it is parsed (room is left for CRLF line ends and "Bag Attributes" text).
MAX_PRIVATE_KEY_PEM_CHARS = 8192
# Key Vault holds a secret value of at most 25k bytes; the certificate method's value is the JSON of both fields.
MAX_SECRET_VALUE_BYTES = 25_000
ASSERTION_LIFETIME_SECONDS = 600
# A precomputed assertion is handed out again for this long; after that a fresh one is signed.
ASSERTION_REUSE_SECONDS = ASSERTION_LIFETIME_SECONDS // 2

_AADSTS = re.compile(r"(AADSTS\d+):\s*(.*?)(?:\s+Trace ID:.*)?$", re.DOTALL)
_ENTRA_ERROR = re.compile(r"\((?P<error>[a-z_]+)\)")
_ENCRYPTED_PEM = re.compile(r"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4\s*,\s*ENCRYPTED")

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SUPPORTED_KEYS = f"an RSA key of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
_NO_EC = "Entra ID accepts RSA certificates only"

PrivateKey = rsa.RSAPrivateKey


@dataclass(frozen=True)
class ParsedCertificate:
    """A certificate and its private key, checked by :func:`parse_certificate` (build it only there)."""

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)  # PKCS#8, unencrypted; never leaves the service
    key_type: str  # "RSA"
    thumbprint_sha1: str
    thumbprint_sha256: str
    not_after: datetime
    key_size: int = 0  # bits of the RSA modulus


def _describe(key: object) -> str:
    """What kind of key this is, in words that carry no key material (type and size only)."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"an EC key on {_CURVE_NAMES.get(key.curve.name, key.curve.name)} ({_NO_EC})"
    if key is None:
        return "a key of a type that cannot be read"
    name = type(key).__name__.removeprefix("_").replace("PublicKey", "").replace("PrivateKey", "")
    return f"a key of type {name or 'unknown'}"


def _supported(key: object) -> bool:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS
    return False


# The PKCS#8 algorithms of private keys that load cheaply (RSA without its key check; EC and Edwards keys are
# small); any other (DSA, Diffie-Hellman, one not known) is refused before it is loaded, since loading it computes
# its public value, holding the GIL (a DSA key of 12,000 bits took 0.5 s). Read off the DER, not parsed.
_PKCS8_ALGORITHMS = {  # DER of the OID -> what it is (None: cheap to load; its own checks follow)
    bytes.fromhex("2a864886f70d010101"): None,  # rsaEncryption
    bytes.fromhex("2a864886f70d01010a"): None,  # RSASSA-PSS (openssl genpkey -algorithm RSA-PSS)
    bytes.fromhex("2a8648ce3d0201"): None,  # id-ecPublicKey
    bytes.fromhex("2b6570"): None, bytes.fromhex("2b6571"): None,  # X25519, X448
    bytes.fromhex("2b6572"): None, bytes.fromhex("2b6573"): None,  # Ed25519, Ed448
    bytes.fromhex("2a8648ce380401"): "a DSA key",
    bytes.fromhex("2a864886f70d010301"): "a Diffie-Hellman key",
    bytes.fromhex("2a8648ce3e0201"): "a Diffie-Hellman key",
}
# The traditional (PKCS#1, SEC1) labels that load cheaply, and those refused unloaded.
_CHEAP_LABELS = frozenset({"RSA PRIVATE KEY", "EC PRIVATE KEY"})
_COSTLY_LABELS = {"DSA PRIVATE KEY": "a DSA key"}
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,64})-----(.*?)-----END \1-----", re.S)
_NOT_A_KEY = "must be a PEM private key (PKCS#8 or PKCS#1 RSA)"
# The private key labels a PEM reader loads (it passes over others, such as an OpenSSH key's).
_KEY_LABELS = frozenset({"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY",
                         "ENCRYPTED PRIVATE KEY"})
_WHITESPACE = re.compile(r"\s+")


def _private_key_block(pem: str) -> tuple[str, bytes]:
    """The private key block of the text that a PEM reader loads (the first; other blocks, such as a public key or
    the certificate, and text around it are left out): its label and its DER, header lines and every whitespace
    dropped. What is loaded is exactly this, so what it is can be read off it first. A 400 when there is none, or
    its body is not base64."""
    block = next((block for block in _PEM_BLOCK.finditer(pem) if block[1] in _KEY_LABELS), None)
    if block is None:
        raise _refuse("The certificate or private key cannot be read.", "/credentials/privateKey", _NOT_A_KEY)
    body = "".join(line for line in block[2].splitlines() if ":" not in line)
    try:
        der = base64.b64decode(_WHITESPACE.sub("", body), validate=True)
    except ValueError:  # binascii.Error is one
        raise _refuse("The certificate or private key cannot be read.", "/credentials/privateKey",
                      _NOT_A_KEY) from None
    return block[1], der


def _costly_key(label: str, der: bytes) -> str | None:
    """What a private key block is, when its loading is costly or its algorithm unknown (then it is refused
    unloaded); None when it loads cheaply, or loading it refuses it anyway (not PKCS#8 as it says)."""
    if label in _CHEAP_LABELS:
        return None
    if label != "PRIVATE KEY":
        return _COSTLY_LABELS.get(label)
    oid = _pkcs8_algorithm(der)
    return _PKCS8_ALGORITHMS.get(oid, "a key of an unknown algorithm") if oid is not None else None


def _pkcs8_algorithm(der: bytes) -> bytes | None:
    """The DER of a PKCS#8 PrivateKeyInfo's algorithm OID (SEQUENCE { INTEGER, SEQUENCE { OID, ... }, ... })."""
    def header(at: int, tag: int) -> tuple[int, int] | None:  # (start of the value, its length)
        if at + 2 > len(der) or der[at] != tag:
            return None
        length, at = der[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or at + count > len(der):
                return None
            length, at = int.from_bytes(der[at:at + count], "big"), at + count
        return at, length

    outer = header(0, 0x30)
    version = header(outer[0], 0x02) if outer else None
    algorithm = header(version[0] + version[1], 0x30) if version else None
    oid = header(algorithm[0], 0x06) if algorithm else None
    return der[oid[0]:oid[0] + oid[1]] if oid else None


def _load_private_key(pem: bytes) -> Any:
    """Load a PEM private key without OpenSSL's (GIL-holding, very costly) RSA key check.

    The caller bounds the text first and checks the key afterwards (:func:`parse_certificate`).
    """
    return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)


def _rsa_numbers_consistent(key: rsa.RSAPrivateKey) -> bool:
    """RSA_check_key without its primality tests: cheap integer arithmetic on numbers bounded by the modulus.

    Bounding p, q, d and the CRT values by the modulus also bounds what signing with the key costs.
    """
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    p, q, d = numbers.p, numbers.q, numbers.d
    if not (1 < p < n and 1 < q < n and p * q == n and 0 < d < n):
        return False
    if not (0 < numbers.dmp1 < p and 0 < numbers.dmq1 < q and 0 < numbers.iqmp < p):
        return False
    return (
        (d * e) % math.lcm(p - 1, q - 1) == 1
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1
    )


def _signs_for(key: PrivateKey, public_key: object) -> bool:
    """A pairwise consistency test: a signature made with ``key`` verifies with the certificate's key."""
    message = b"app-connections pairwise consistency test"
    try:
        assert isinstance(public_key, rsa.RSAPublicKey)
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except Exception:  # an invalid signature, or OpenSSL refusing an inconsistent key
        return False
    return True


class _Expired(InvalidRequest):
    """The certificate given has expired (a 400 like any other refusal of the request)."""


def _refuse(detail: str, pointer: str, message: str) -> InvalidRequest:
    return InvalidRequest(detail, errors=[FieldError(pointer, message)])


def stored_size(certificate_body: str, private_key: str) -> int:
    """The bytes of the certificate method's secret value in Key Vault (the JSON the vault adapter writes)."""
    return len(json.dumps({"certificateBody": certificate_body, "privateKey": private_key}).encode())


def parse_certificate(certificate_body: str, private_key: str, now: datetime | None = None) -> ParsedCertificate:
    """Check that the PEM certificate and key parse, match, and that the certificate is valid now.

    Synchronous and CPU-bound (a few milliseconds for a 4096-bit RSA key): on the event loop, prefer
    :func:`parse_certificate_async`. The certificate's key is checked before the private key is parsed,
    and a private key PEM longer than :data:`MAX_PRIVATE_KEY_PEM_CHARS` is refused unparsed.
    Raises :class:`InvalidRequest` whose field errors never echo the values.
    """
    errors: list[FieldError] = []
    cert: x509.Certificate | None = None
    try:
        cert = x509.load_pem_x509_certificate(certificate_body.encode())
    except (ValueError, TypeError, x509.InvalidVersion):  # InvalidVersion: an X.509 version past v3
        errors.append(FieldError("/credentials/certificateBody", "must be a PEM certificate (BEGIN CERTIFICATE)"))
    if len(private_key) > MAX_PRIVATE_KEY_PEM_CHARS:
        errors.append(
            FieldError(
                "/credentials/privateKey",
                f"must be at most {MAX_PRIVATE_KEY_PEM_CHARS} characters of PEM ({_SUPPORTED_KEYS})",
            )
        )
    elif _ENCRYPTED_PEM.search(private_key):
        errors.append(FieldError("/credentials/privateKey", "must not be encrypted with a password"))
    elif not errors and stored_size(certificate_body, private_key) > MAX_SECRET_VALUE_BYTES:
        errors.append(FieldError("/credentials/certificateBody", (
            f"must fit in one Key Vault secret with its key ({MAX_SECRET_VALUE_BYTES} bytes of JSON): give the "
            "certificate alone, without its chain or text around it")))
    if errors:
        raise InvalidRequest("The certificate or private key cannot be read.", errors=errors)
    assert cert is not None

    # The certificate's key first: reading it is cheap, and an unsupported one stops here, key unparsed.
    try:
        public_key: object = cert.public_key()
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm):
        public_key = None
    if not _supported(public_key):
        raise _refuse(
            "The certificate's key is not supported.",
            "/credentials/certificateBody",
            f"must be the certificate of {_SUPPORTED_KEYS}; this one has {_describe(public_key)}",
        )

    label, der = _private_key_block(private_key)
    costly = _costly_key(label, der)
    if costly is not None:
        raise _refuse(
            "The private key is not supported.",
            "/credentials/privateKey",
            f"must be {_SUPPORTED_KEYS}; this one is {costly}",
        )
    block = f"-----BEGIN {label}-----\n{base64.encodebytes(der).decode()}-----END {label}-----\n"
    try:
        key = _load_private_key(block.encode())
    except TypeError:
        raise _refuse(
            "The certificate or private key cannot be read.",
            "/credentials/privateKey",
            "must not be encrypted with a password",
        ) from None
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm):
        raise _refuse("The certificate or private key cannot be read.", "/credentials/privateKey", _NOT_A_KEY
                      ) from None
    if not _supported(key):
        raise _refuse(
            "The private key is not supported.",
            "/credentials/privateKey",
            f"must be {_SUPPORTED_KEYS}; this one is {_describe(key)}",
        )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert isinstance(public_key, rsa.RSAPublicKey)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if public_key.public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise _refuse(
            "The private key does not belong to the certificate.",
            "/credentials/privateKey",
            "must be the private key of the certificate",
        )
    if not _rsa_numbers_consistent(key) or not _signs_for(key, public_key):
        raise _refuse(
            "The private key is not valid.",
            "/credentials/privateKey",
            "must be a valid private key (its parts are inconsistent)",
        )
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise _refuse(
            "The certificate is not valid yet.",
            "/credentials/certificateBody",
            "is not valid before its notBefore date",
        )
    if now > cert.not_valid_after_utc:
        raise _Expired("The certificate has expired.",
                       errors=[FieldError("/credentials/certificateBody", "expired on its notAfter date")])
    der = cert.public_bytes(serialization.Encoding.DER)
    return ParsedCertificate(
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        key_type="RSA",
        thumbprint_sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
        thumbprint_sha256=hashlib.sha256(der).hexdigest().upper(),
        not_after=cert.not_valid_after_utc,
        key_size=key.key_size,
    )


async def parse_certificate_async(
    certificate_body: str, private_key: str, now: datetime | None = None
) -> ParsedCertificate:
    """:func:`parse_certificate` in a worker thread, off the event loop."""
    return await asyncio.to_thread(parse_certificate, certificate_body, private_key, now)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _token_endpoint(authority: str, tenant_id: str) -> str:
    authority = authority.strip().rstrip("/")
    if "://" not in authority:
        authority = "https://" + authority  # azure-identity accepts a bare host, as in AzureAuthorityHosts
    return f"{authority}/{tenant_id}/oauth2/v2.0/token"


def _signing_key(parsed: ParsedCertificate) -> PrivateKey:
    # Checked by parse_certificate, which wrote this PEM: loading it again is cheap, without the RSA key check.
    key = serialization.load_pem_private_key(parsed.private_key_pem, password=None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def client_assertion(
    parsed: ParsedCertificate, tenant_id: str, client_id: str, authority: str, now: float | None = None
) -> str:
    """A JWT client assertion for Entra ID's token endpoint, signed with the certificate's private key.

    RS256 with ``x5t`` (base64url SHA-1 thumbprint) and ``x5t#S256``. Valid for
    :data:`ASSERTION_LIFETIME_SECONDS` from ``now``. CPU-bound (about 5 ms for a 4096-bit key): on the event
    loop, prefer :func:`client_assertion_async`.
    """
    issued = int(time.time() if now is None else now)
    claims = {
        "aud": _token_endpoint(authority, tenant_id),
        "iss": client_id,
        "sub": client_id,
        "jti": str(uuid.uuid4()),
        "nbf": issued,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
    }
    return signed_jwt(parsed, claims)


def signed_jwt(parsed: ParsedCertificate, claims: Mapping[str, Any]) -> str:
    """A compact JWS of ``claims`` signed with the certificate's private key, RS256 with the certificate's
    thumbprints in the header (``x5t``, ``x5t#S256``, and ``kid`` in hex). CPU-bound: run it in a worker thread
    on the event loop."""
    key = _signing_key(parsed)
    header = {
        "alg": "RS256",
        "typ": "JWT",
        "x5t": _b64url(bytes.fromhex(parsed.thumbprint_sha1)),
        "x5t#S256": _b64url(bytes.fromhex(parsed.thumbprint_sha256)),
        # The key's id as Microsoft's proof-of-possession sample writes it (the SHA-1 thumbprint, in hex): Graph's
        # addKey and removeKey may look the key up by it.
        "kid": parsed.thumbprint_sha1.upper(),
    }
    signing_input = f"{_b64url(_json(header))}.{_b64url(_json(claims))}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


async def client_assertion_async(
    parsed: ParsedCertificate, tenant_id: str, client_id: str, authority: str, now: float | None = None
) -> str:
    """:func:`client_assertion` in a worker thread, off the event loop."""
    return await asyncio.to_thread(client_assertion, parsed, tenant_id, client_id, authority, now)


class _Assertions:
    """The ``func`` of a ``ClientAssertionCredential``: hands out a signed assertion.

    ``build_credential_async`` signs the first one in a worker thread; it is reused while it has more than
    half its lifetime left (a credential serves one run). Past that, or if none was given, one is signed
    here, on the caller's thread (a few milliseconds: the key was checked already).
    """

    def __init__(
        self,
        parsed: ParsedCertificate,
        tenant_id: str,
        client_id: str,
        authority: str,
        assertion: str | None = None,
        issued: float = 0.0,
    ) -> None:
        self._parsed, self._tenant_id, self._client_id, self._authority = parsed, tenant_id, client_id, authority
        self._assertion, self._issued = assertion, issued

    def __call__(self) -> str:
        now = time.time()
        if self._assertion is None or not 0 <= now - self._issued < ASSERTION_REUSE_SECONDS:
            self._assertion = client_assertion(self._parsed, self._tenant_id, self._client_id, self._authority, now)
            self._issued = now
        return self._assertion


def _assertion_credential(
    clients: AzureClients, tenant_id: str, client_id: str, assertions: _Assertions
) -> AsyncTokenCredential:
    from azure.identity.aio import ClientAssertionCredential

    return ClientAssertionCredential(tenant_id, client_id, assertions, **clients.identity_kwargs())


def build_credential(
    clients: AzureClients, method: Method, tenant_id: str, client_id: str, material: Mapping[str, str]
) -> AsyncTokenCredential:
    """An azure-identity credential for a connection's secret material.

    For a certificate this parses the key and later signs the assertion on the calling thread (a few
    milliseconds each for a 4096-bit key); async code should prefer :func:`build_credential_async`.
    """
    if method is Method.CLIENT_SECRET:
        from azure.identity.aio import ClientSecretCredential

        return ClientSecretCredential(tenant_id, client_id, material["clientSecret"], **clients.identity_kwargs())
    if method is Method.CERTIFICATE:
        parsed = stored_certificate(material["certificateBody"], material["privateKey"])
        authority = clients.settings.authority_host
        assertions = _Assertions(parsed, tenant_id, client_id, authority)
        return _assertion_credential(clients, tenant_id, client_id, assertions)
    if method is Method.FEDERATED:
        raise InvalidRequest("A federated credential is built asynchronously (build_credential_async).")
    raise InvalidRequest(f"The {method.value} method has no client credential.")


async def _federated_credential(clients: AzureClients, tenant_id: str, client_id: str) -> AsyncTokenCredential:
    """Sign in as the customer's application with the service's managed identity's token as the client assertion.

    The identity's token (for the token-exchange audience) is acquired here, on the event loop, with the async
    ``ManagedIdentityCredential`` (which caches it; concurrent first sign-ins share its one request,
    ``shared.azure.clients.SharedTokenRequests``); the ``ClientAssertionCredential``'s ``func`` is synchronous
    and returns that token (a credential serves one run, well within the token's lifetime). The identity's
    failure is an ``UpstreamError``: it is the service's, not the connection's.
    """
    from azure.core.exceptions import AzureError
    from azure.identity.aio import ClientAssertionCredential

    identity = require_identity(clients.settings)
    if client_id.lower() in service_applications(clients.settings):  # created before such connections were refused
        raise CredentialRejected(SERVICE_APPLICATION)
    try:
        token = await clients.federation_credential().get_token(f"{identity.audience}/.default")
    except (AzureError, OSError, TimeoutError):
        raise UpstreamError("The service's managed identity could not get a token for the token exchange "
                            f"(FEDERATION_IDENTITY_CLIENT_ID {identity.client_id}).") from None
    assertion = token.token
    return ClientAssertionCredential(tenant_id, client_id, lambda: assertion, **clients.identity_kwargs())


def stored_certificate(certificate_body: str, private_key: str, now: datetime | None = None) -> ParsedCertificate:
    """:func:`parse_certificate` of a connection's stored material, to sign in with: what it refuses (expired, not
    valid yet) no longer signs in, a :class:`CredentialRejected` as Entra's own refusal of it would be (the
    connection is invalid), not a 400 about a field of a request that has none; expired, a
    :class:`CredentialExpired` (a clean-up whose last removal was sent takes it as Entra's AADSTS700027 for an
    expired key: review T)."""
    try:
        return parse_certificate(certificate_body, private_key, now)
    except InvalidRequest as refused:
        why = "; ".join(f"{error.pointer.rsplit('/', 1)[-1]} {error.detail}" for error in refused.errors)
        kind = CredentialExpired if isinstance(refused, _Expired) else CredentialRejected
        raise kind(f"{refused.detail}{f' ({why})' if why else ''} The stored certificate cannot sign in; change the "
                   "credentials.") from None


def _prepare_assertion(
    certificate_body: str, private_key: str, tenant_id: str, client_id: str, authority: str
) -> _Assertions:
    parsed = stored_certificate(certificate_body, private_key)
    issued = time.time()
    assertion = client_assertion(parsed, tenant_id, client_id, authority, issued)
    return _Assertions(parsed, tenant_id, client_id, authority, assertion, issued)


async def build_credential_async(
    clients: AzureClients, method: Method, tenant_id: str, client_id: str, material: Mapping[str, str]
) -> AsyncTokenCredential:
    """:func:`build_credential`, with a certificate parsed and its client assertion signed in a worker thread.

    The credential is a ``ClientAssertionCredential`` whose function returns that precomputed assertion
    (valid 10 minutes; signed again, quickly, if the credential is still in use after 5).
    """
    if method is Method.FEDERATED:
        return await _federated_credential(clients, tenant_id, client_id)
    if method is Method.CERTIFICATE:
        assertions = await asyncio.to_thread(
            _prepare_assertion,
            material["certificateBody"],
            material["privateKey"],
            tenant_id,
            client_id,
            clients.settings.authority_host,
        )
        return _assertion_credential(clients, tenant_id, client_id, assertions)
    return build_credential(clients, method, tenant_id, client_id, material)


# Entra's answers that say it failed or is throttling, not that it refused the credential: its 5xx and 429 (whose
# body still carries an AADSTS code, e.g. AADSTS90033 "A transient error has occurred"), and these OAuth errors.
_ENTRA_UNAVAILABLE = frozenset({"temporarily_unavailable", "server_error"})


def entra_unavailable(status: int | None, error: str | None,
                      headers: Mapping[str, str] | None = None) -> UpstreamError | None:
    """The error for an answer of Entra's token endpoint that is a failure of Entra, not a refusal of the
    credential (a 5xx, a 429, ``temporarily_unavailable`` or ``server_error``): nothing is wrong with the
    credential, and it must not be marked invalid or failing for it. Still throttling (429, 503) once the retries
    ran out, a 503 with Entra's wait (``headers``), as any Azure service's."""
    if (status is not None and (status >= 500 or status == 429)) or (error or "") in _ENTRA_UNAVAILABLE:
        detail = (f"Entra ID is unavailable or throttling{f' (HTTP {status})' if status else ''}; the credential "
                  "was not checked. Try again later.")
        if status in (429, 503):
            from shared.azure.retry import retry_after_of

            lowered = {name.lower(): value for name, value in (headers or {}).items()}
            return UpstreamThrottled(detail, retry_after=retry_after_of(lowered))
        return UpstreamError(detail)
    return None


def relayed(text: str, limit: int = 600) -> str:
    """Entra's own words, as the service passes them on (problems, health and status messages, notifications):
    redacted (a secret it quoted, registered or handled by this request) and cut to ``limit`` characters."""
    from shared.redaction import redact

    cleaned = redact(text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def rejection_from(error: Exception) -> CredentialRejected | None:
    """Entra's refusal (``AADSTS`` code and message) in an azure-identity error, if it is one: not when the error
    is Entra's own failure (:func:`entra_unavailable`)."""
    message = str(getattr(error, "message", None) or error)
    match = _AADSTS.search(message)
    if match is None:
        return None
    code, text = match.group(1), match.group(2).strip()
    kind = _ENTRA_ERROR.search(message)
    response = getattr(error, "response", None)
    if entra_unavailable(getattr(response, "status_code", None), kind.group("error") if kind else None):
        return None
    extensions: dict[str, Any] = {"aadstsCode": code}
    if kind:
        extensions["entraError"] = kind.group("error")
    return CredentialRejected(f"{code}: {relayed(text)}", extensions=extensions)


async def acquire_token(
    clients: AzureClients,
    app: AppSpec,
    method: Method,
    tenant_id: str,
    client_id: str,
    material: Mapping[str, str],
) -> AccessToken:
    """Acquire a token for the app's scope with the given credentials, or raise a clear error."""
    credential = await build_credential_async(clients, method, tenant_id, client_id, material)
    async with credential:
        return await token_of(credential, app.scope(clients.settings))


async def token_of(credential: AsyncTokenCredential, scope: str) -> AccessToken:
    """``credential``'s token for ``scope``, or a clear error: Entra's refusal of the credential
    (``CredentialRejected``, with its AADSTS code), or Entra's own failure (``UpstreamError``)."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    try:
        return await credential.get_token(scope)
    except ClientAuthenticationError as error:
        rejected = rejection_from(error)
        if rejected is not None:
            raise rejected from None
        response = getattr(error, "response", None)
        unavailable = entra_unavailable(getattr(response, "status_code", None), None,
                                        getattr(response, "headers", None))
        if unavailable is not None:
            raise unavailable from None
        raise UpstreamError("Entra ID could not be reached or did not answer as expected.") from None
    except (AzureError, OSError, TimeoutError):
        raise UpstreamError("Entra ID could not be reached.") from None
