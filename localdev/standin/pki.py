"""Certificates for the stand-in: its CA and TLS server certificate, and client certificates for tests."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "standin-ca.pem"
CA_KEY_FILE = "standin-ca-key.pem"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWT headers carry thumbprints."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_pem(key: PrivateKey, key_format: Literal["pkcs8", "pkcs1"] = "pkcs8") -> str:
    fmt = serialization.PrivateFormat.PKCS8 if key_format == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode("ascii")


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def self_signed(
    key: PrivateKey,
    common_name: str,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=365)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(key, hashes.SHA256())


def make_certificate(
    common_name: str,
    key_type: Literal["rsa", "ec"] = "rsa",
    key_format: Literal["pkcs8", "pkcs1"] = "pkcs8",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[str, str]:
    """A self-signed client certificate and its private key, both PEM: ``(cert_pem, key_pem)``.

    ``key_format="pkcs1"`` writes ``BEGIN RSA PRIVATE KEY`` (or SEC1 ``BEGIN EC PRIVATE KEY`` for EC keys).
    """
    key: PrivateKey = new_rsa_key() if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, common_name, not_before, not_after)
    return cert_pem(cert), key_pem(key, key_format)


@dataclass(frozen=True)
class Thumbprints:
    sha1_hex: str  # upper case, as the Azure portal shows it
    sha256_hex: str
    x5t: str  # base64url SHA-1, unpadded
    x5t_s256: str  # base64url SHA-256, unpadded

    @classmethod
    def of(cls, cert: x509.Certificate) -> Thumbprints:
        sha1 = cert.fingerprint(hashes.SHA1())  # noqa: S303 - a certificate thumbprint, not a security hash
        sha256 = cert.fingerprint(hashes.SHA256())
        return cls(sha1.hex().upper(), sha256.hex().upper(), b64url(sha1), b64url(sha256))


@dataclass
class ServerPki:
    """The CA (PEM file at :attr:`ca_path`) and the TLS server certificate and key files it signed."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def _load_or_create_ca(directory: Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    ca_file, key_file = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if ca_file.exists() and key_file.exists():
        cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc > _now() + (
            dt.timedelta(days=1)
        ):
            return cert, loaded
    key = ec.generate_private_key(ec.SECP256R1())  # EC: a fast start; every TLS client here accepts ECDSA
    cert = self_signed(key, "App Connections stand-in CA", not_after=_now() + dt.timedelta(days=3650), ca=True)
    _write_private(key_file, key_pem(key))
    ca_file.write_text(cert_pem(cert))
    return cert, key


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def server_pki(directory: Path) -> ServerPki:
    """Reuse (or create) the CA in ``directory`` and issue a fresh server certificate for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_create_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "standin-server.pem", directory / "standin-server-key.pem"
    cert_path.write_text(cert_pem(cert))
    _write_private(key_path, key_pem(key))
    return ServerPki(directory / CA_CERT_FILE, cert_path, key_path)
