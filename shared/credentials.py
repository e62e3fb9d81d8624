"""A credential per method, certificate and key parsing, and token acquisition.

The private key of a certificate connection never leaves the service: it signs the
client assertion here (azure-identity's CertificateCredential for RSA keys, an ES256/384/512
assertion signed by this module for EC keys).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from shared.apps import AppSpec, Method
from shared.errors import CredentialRejected, FieldError, InvalidRequest, UpstreamError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.azure.clients import AzureClients

MIN_RSA_BITS = 2048
_AADSTS = re.compile(r"(AADSTS\d+):\s*(.*?)(?:\s+Trace ID:.*)?$", re.DOTALL)
_ENTRA_ERROR = re.compile(r"\((?P<error>[a-z_]+)\)")


@dataclass(frozen=True)
class ParsedCertificate:
    certificate_pem: bytes
    private_key_pem: bytes  # PKCS#8, unencrypted; never leaves the service
    key_type: str  # "RSA" or "EC"
    thumbprint_sha1: str
    thumbprint_sha256: str
    not_after: datetime

    @property
    def bundle(self) -> bytes:
        return self.private_key_pem + self.certificate_pem


def parse_certificate(certificate_body: str, private_key: str, now: datetime | None = None) -> ParsedCertificate:
    """Check that the PEM certificate and key parse, match, and that the certificate is valid now."""
    errors: list[FieldError] = []
    cert: x509.Certificate | None = None
    key: Any = None
    try:
        cert = x509.load_pem_x509_certificate(certificate_body.encode())
    except (ValueError, TypeError):
        errors.append(FieldError("/credentials/certificateBody", "must be a PEM certificate (BEGIN CERTIFICATE)"))
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except TypeError:
        errors.append(FieldError("/credentials/privateKey", "must not be encrypted with a password"))
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm):
        errors.append(
            FieldError("/credentials/privateKey", "must be a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")
        )
    if errors:
        raise InvalidRequest("The certificate or private key cannot be read.", errors=errors)
    assert cert is not None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidRequest(
                "The RSA key is too short.",
                errors=[FieldError("/credentials/privateKey", f"must be an RSA key of at least {MIN_RSA_BITS} bits")],
            )
        key_type = "RSA"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHMS:
        key_type = "EC"
    else:
        raise InvalidRequest(
            "The private key type is not supported.",
            errors=[FieldError("/credentials/privateKey", "must be an RSA or an EC (P-256, P-384, P-521) key")],
        )
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise InvalidRequest(
            "The private key does not belong to the certificate.",
            errors=[FieldError("/credentials/privateKey", "must be the private key of the certificate")],
        )
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise InvalidRequest(
            "The certificate is not valid yet.",
            errors=[FieldError("/credentials/certificateBody", "is not valid before its notBefore date")],
        )
    if now > cert.not_valid_after_utc:
        raise InvalidRequest(
            "The certificate has expired.",
            errors=[FieldError("/credentials/certificateBody", "expired on its notAfter date")],
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    return ParsedCertificate(
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        key_type=key_type,
        thumbprint_sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
        thumbprint_sha256=hashlib.sha256(der).hexdigest().upper(),
        not_after=cert.not_valid_after_utc,
    )


_EC_ALGORITHMS: dict[str, tuple[str, hashes.HashAlgorithm, int]] = {
    "secp256r1": ("ES256", hashes.SHA256(), 32),
    "secp384r1": ("ES384", hashes.SHA384(), 48),
    "secp521r1": ("ES512", hashes.SHA512(), 66),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ec_client_assertion(parsed: ParsedCertificate, tenant_id: str, client_id: str, authority: str) -> str:
    """A JWT client assertion signed with an EC key (RFC 7515 JWS, raw r||s signature)."""
    key = serialization.load_pem_private_key(parsed.private_key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    alg, digest, size = _EC_ALGORITHMS[key.curve.name]
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", "x5t#S256": _b64url(bytes.fromhex(parsed.thumbprint_sha256))}
    claims = {
        "aud": f"{authority}/{tenant_id}/oauth2/v2.0/token",
        "iss": client_id,
        "sub": client_id,
        "jti": str(uuid.uuid4()),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(digest)))
    return f"{signing_input}.{_b64url(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def build_credential(
    clients: AzureClients, method: Method, tenant_id: str, client_id: str, material: Mapping[str, str]
) -> AsyncTokenCredential:
    """An azure-identity credential for a connection's secret material."""
    kwargs = clients.identity_kwargs()
    if method is Method.CLIENT_SECRET:
        from azure.identity.aio import ClientSecretCredential

        return ClientSecretCredential(tenant_id, client_id, material["clientSecret"], **kwargs)
    if method is Method.CERTIFICATE:
        parsed = parse_certificate(material["certificateBody"], material["privateKey"])
        if parsed.key_type == "RSA":
            from azure.identity.aio import CertificateCredential

            return CertificateCredential(tenant_id, client_id, certificate_data=parsed.bundle, **kwargs)
        from azure.identity.aio import ClientAssertionCredential

        authority = clients.settings.authority_host
        return ClientAssertionCredential(
            tenant_id, client_id, lambda: ec_client_assertion(parsed, tenant_id, client_id, authority), **kwargs
        )
    raise InvalidRequest(f"The {method.value} method has no client credential.")


def rejection_from(error: Exception) -> CredentialRejected | None:
    """Entra's refusal (``AADSTS`` code and message) in an azure-identity error, if it is one."""
    message = str(getattr(error, "message", None) or error)
    match = _AADSTS.search(message)
    if match is None:
        return None
    code, text = match.group(1), match.group(2).strip()
    kind = _ENTRA_ERROR.search(message)
    extensions: dict[str, Any] = {"aadstsCode": code}
    if kind:
        extensions["entraError"] = kind.group("error")
    return CredentialRejected(f"{code}: {text}", extensions=extensions)


async def acquire_token(
    clients: AzureClients,
    app: AppSpec,
    method: Method,
    tenant_id: str,
    client_id: str,
    material: Mapping[str, str],
) -> AccessToken:
    """Acquire a token for the app's scope with the given credentials, or raise a clear error."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError

    credential = build_credential(clients, method, tenant_id, client_id, material)
    try:
        async with credential:
            return await credential.get_token(app.scope(clients.settings))
    except ClientAuthenticationError as error:
        rejected = rejection_from(error)
        if rejected is not None:
            raise rejected from None
        raise UpstreamError("Entra ID could not be reached or did not answer as expected.") from None
    except (AzureError, OSError, TimeoutError):
        raise UpstreamError("Entra ID could not be reached.") from None
