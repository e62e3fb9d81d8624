"""Compact JWS tokens signed with RS256 (RFC 7515, RFC 7519), checked strictly, for Entra ID's tokens.

The JOSE parsing is ours and small: a token is exactly three canonical base64url segments (no padding, no other
character), a header that is a JSON object (no duplicate member, no NaN or Infinity) naming ``alg: RS256``,
a ``kid`` that is a string and no ``crit`` (we understand no extension, so every critical one is refused); the
key never comes from the token (``jku``, ``jwk``, ``x5u``, ``x5c`` are ignored), only from the tenant's
published key set, by ``kid``. The signature (RSASSA-PKCS1-v1_5 with SHA-256 over the ASCII ``header.payload``)
is checked by ``cryptography``; no RSA arithmetic is done here. The claims then: ``exp``, ``iss`` and ``aud``
required; ``exp``, ``nbf`` and ``iat`` finite numbers (not booleans, not strings), with a leeway; ``iss`` equal
to the issuer; ``aud`` a string or a list of strings containing an accepted audience; ``sub`` and ``jti``
strings when present.

``cryptography`` is imported only when a key or a signature is first needed (:func:`load_crypto` lets a
caller do it ahead, in a thread, while it waits on the network): importing this module costs next to nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 16 * 1024
MIN_MODULUS_BITS = 2048
MAX_MODULUS_BITS = 16384
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

Reason = Literal["malformed", "algorithm", "invalid", "expired", "not_yet_valid", "audience", "issuer"]


class JwsError(ValueError):
    """Why a token is refused: ``reason`` says which check failed, the message says how (never echoing the
    token)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True)
class SignedToken:
    """A parsed compact JWS whose signature is not checked yet."""

    header: Mapping[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None


def _segment(text: str, name: str) -> bytes:
    """The bytes of one base64url segment, which must be in its one canonical form."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JwsError("malformed", f"The {name} is not base64url.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwsError("malformed", f"The {name} is not base64url.") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise JwsError("malformed", f"The {name} is not canonical base64url.")  # no second spelling of a token
    return raw


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member")
    return members


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members,
                           parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JwsError("malformed", f"The {name} is not JSON.") from None
    if not isinstance(value, dict):
        raise JwsError("malformed", f"The {name} is not a JSON object.")
    return value


def parse(token: str) -> SignedToken:
    """The token's parts and header, the header checked: RS256, a string ``kid`` if any, no ``crit``."""
    if len(token) > MAX_TOKEN_CHARS:
        raise JwsError("malformed", "The token is too long.")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError("malformed", "A compact JWS has exactly three parts.")
    header_text, payload_text, signature_text = parts
    header = _json_object(_segment(header_text, "header"), "header")
    payload = _segment(payload_text, "payload")
    signature = _segment(signature_text, "signature")
    if header.get("alg") != ALGORITHM:
        raise JwsError("algorithm", "Only RS256 is accepted.")
    if "kid" in header and not isinstance(header["kid"], str):
        raise JwsError("malformed", "The kid header is not a string.")
    if "crit" in header:
        raise JwsError("invalid", "The token has critical header parameters, and none is understood here.")
    if header.get("b64", True) is not True:
        raise JwsError("invalid", "Unencoded payloads (b64) are not accepted.")
    if not signature:
        raise JwsError("malformed", "The token has no signature.")
    return SignedToken(MappingProxyType(header), f"{header_text}.{payload_text}".encode("ascii"), payload,
                       signature)


def load_crypto() -> None:
    """Import what checking a signature needs (call it in a thread, overlapping network waits)."""
    from cryptography.exceptions import InvalidSignature  # noqa: F401
    from cryptography.hazmat.primitives import hashes  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: F401


def _uint(value: Any, name: str) -> int:
    if not isinstance(value, str) or not value:
        raise JwsError("invalid", f"The key's {name} is missing.")
    return int.from_bytes(_segment(value, f"key's {name}"), "big")


def public_key(jwk: Mapping[str, Any]) -> RSAPublicKey:
    """The RSA public key a JWK (RFC 7517) describes, if it is one to verify RS256 signatures with: ``kty: RSA``,
    ``use`` (if any) ``sig``, ``alg`` (if any) ``RS256``, ``key_ops`` (if any) with ``verify``, a modulus of at
    least ``MIN_MODULUS_BITS``."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if jwk.get("kty") != "RSA":
        raise JwsError("invalid", "The key is not an RSA key.")
    if jwk.get("use", "sig") != "sig":
        raise JwsError("invalid", "The key is not for signatures.")
    if jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise JwsError("invalid", "The key is for another algorithm.")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JwsError("invalid", "The key is not for verifying.")
    modulus, exponent = _uint(jwk.get("n"), "modulus"), _uint(jwk.get("e"), "exponent")
    if not MIN_MODULUS_BITS <= modulus.bit_length() <= MAX_MODULUS_BITS:
        raise JwsError("invalid", f"The key's modulus is not {MIN_MODULUS_BITS} to {MAX_MODULUS_BITS} bits.")
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        raise JwsError("invalid", "The key is not a valid RSA public key.") from None


def _number(claims: Mapping[str, Any], name: str) -> float:
    """A NumericDate claim: an integer (of any size: compared exactly) or a finite float."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwsError("invalid", f"The {name} claim is not a number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise JwsError("invalid", f"The {name} claim is not a number.")
    return value


def verify(token: SignedToken, key: RSAPublicKey, *, issuer: str, audiences: Iterable[str], now: float,
           leeway: float) -> dict[str, Any]:
    """The token's claims, once its signature by ``key`` and its claims are checked (CPU work: run it in a
    thread)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(token.signature, token.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise JwsError("invalid", "The signature is not valid.") from None
    claims = _json_object(token.payload, "payload")
    for required in ("exp", "iss", "aud"):
        if claims.get(required) is None:
            raise JwsError("invalid", f"The {required} claim is missing.")
    if "iat" in claims and _number(claims, "iat") > now + leeway:
        raise JwsError("not_yet_valid", "The token is issued in the future.")
    if "nbf" in claims and _number(claims, "nbf") > now + leeway:
        raise JwsError("not_yet_valid", "The token is not valid yet.")
    if _number(claims, "exp") <= now - leeway:
        raise JwsError("expired", "The token has expired.")
    if not isinstance(claims["iss"], str) or claims["iss"] != issuer:
        raise JwsError("issuer", "The token is from another issuer.")
    audience = claims["aud"]
    named = [audience] if isinstance(audience, str) else audience
    if not named or not isinstance(named, list) or not all(isinstance(each, str) for each in named):
        raise JwsError("audience", "The aud claim is not a string or a list of strings.")
    if not set(named) & set(audiences):
        raise JwsError("audience", "The token is for another audience.")
    for optional in ("sub", "jti"):
        if optional in claims and not isinstance(claims[optional], str):
            raise JwsError("invalid", f"The {optional} claim is not a string.")
    return claims
