"""shared.jws on its own: which JWKs give a verifying key, and where the time checks draw their lines. (Tokens
through the service's check, and the comparison with PyJWT, are in test_auth.py.)"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shared import jws

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISSUER, AUDIENCE, NOW, LEEWAY = "https://login.example/t/v2.0", "api", 1_000_000.0, 120


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def jwk(key: rsa.RSAPrivateKey = KEY, **changes: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "use": "sig", "kid": "k1", "n": _uint(numbers.n), "e": _uint(numbers.e), **changes}


def token(claims: dict[str, Any]) -> jws.SignedToken:
    head = _b64(json.dumps({"alg": "RS256", "kid": "k1"}).encode())
    body = _b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, **claims}).encode())
    signature = KEY.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return jws.parse(f"{head}.{body}.{_b64(signature)}")


def test_an_rsa_signing_jwk_gives_the_public_key() -> None:
    assert jws.public_key(jwk()).public_numbers() == KEY.public_key().public_numbers()
    assert jws.public_key(jwk(alg="RS256", key_ops=["verify"], x5c=["ignored"])).key_size == 2048
    assert jws.public_key({k: v for k, v in jwk().items() if k != "use"}).key_size == 2048


@pytest.mark.parametrize("changes", [
    {"kty": "EC"}, {"kty": "oct"}, {"kty": None}, {"use": "enc"}, {"alg": "RS384"}, {"alg": "HS256"},
    {"key_ops": ["encrypt"]}, {"key_ops": "verify"}, {"n": None}, {"n": ""}, {"n": "not base64!"},
    {"n": _uint(KEY.public_key().public_numbers().n) + "="}, {"e": 65537}, {"e": _uint(1)}, {"e": _uint(65536)},
    {"n": _uint(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers().n)},
])
def test_a_jwk_that_is_not_a_sound_rs256_verifying_key_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(jws.JwsError):
        jws.public_key(jwk(**changes))


@pytest.mark.parametrize("bits", [jws.MIN_MODULUS_BITS - 1, jws.MAX_MODULUS_BITS + 1], ids=["short", "long"])
def test_a_jwk_whose_modulus_is_shorter_or_longer_than_the_bounds_is_refused(bits: int) -> None:
    """A modulus over ``MAX_MODULUS_BITS`` would cost every verification with it dearly: refused for its size."""
    modulus = (1 << (bits - 1)) | 1  # ``bits`` bits, odd
    with pytest.raises(jws.JwsError, match="modulus is not"):
        jws.public_key(jwk(n=_uint(modulus)))


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": NOW - LEEWAY}, "expired"),  # exp is the first instant it is no longer valid
    ({"exp": NOW - LEEWAY + 1}, None),
    ({"exp": NOW + 60, "nbf": NOW + LEEWAY}, None),
    ({"exp": NOW + 60, "nbf": NOW + LEEWAY + 0.5}, "not_yet_valid"),
    ({"exp": NOW + 60, "iat": NOW + LEEWAY + 1}, "not_yet_valid"),
    ({"exp": NOW + 60, "iat": None}, "invalid"),
    ({"exp": NOW + 60, "sub": ["u"]}, "invalid"),
])
def test_the_time_claims_allow_the_leeway_and_no_more(claims: dict[str, Any], reason: str | None) -> None:
    def check() -> dict[str, Any]:
        return jws.verify(token(claims), KEY.public_key(), issuer=ISSUER, audiences=[AUDIENCE], now=NOW,
                          leeway=LEEWAY)

    if reason is None:
        assert check()["exp"] == claims["exp"]
    else:
        with pytest.raises(jws.JwsError) as refused:
            check()
        assert refused.value.reason == reason


RS256_HEADER = _b64(b'{"alg":"RS256"}')


@pytest.mark.parametrize("text", [
    "", ".", "a.b", "a.b.c.d", f"{RS256_HEADER}.e30.", f"{RS256_HEADER}.e30.AA==", f"{RS256_HEADER}.e30.QR",
    f"{RS256_HEADER}.e30.A", f"{RS256_HEADER}.e30.A+/A", f"{RS256_HEADER}.e30 .AAAA", f"{RS256_HEADER}.e30.AAé",
    f"{RS256_HEADER}. e30.AAAA",
])
def test_only_three_canonical_base64url_parts_parse(text: str) -> None:
    assert jws.parse(f"{RS256_HEADER}.e30.AAAA").signature == b"\0\0\0"
    with pytest.raises(jws.JwsError) as refused:
        jws.parse(text)
    assert refused.value.reason == "malformed"


def test_parsing_keeps_the_signed_bytes_as_sent() -> None:
    head, body = _b64(b'{"alg":"RS256","kid":"k1"}'), _b64(b'{"a": 1}')
    parsed = jws.parse(f"{head}.{body}.AQAB")
    assert (parsed.signing_input, parsed.payload, parsed.signature, parsed.kid) == (
        f"{head}.{body}".encode(), b'{"a": 1}', b"\x01\x00\x01", "k1")
