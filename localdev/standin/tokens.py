"""The stand-in's token signing key: issues RS256 access tokens, publishes them as JWKS, verifies them."""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from localdev.standin.pki import Thumbprints, b64url, new_rsa_key, self_signed

ACCESS_TOKEN_LIFETIME = 3599


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class InvalidAccessToken(Exception):
    """Why a bearer token is refused (the message is safe to show)."""


class Signer:
    def __init__(self) -> None:
        self._key = new_rsa_key()
        self.public_key = self._key.public_key()
        cert = self_signed(self._key, "App Connections stand-in token signing", not_after=None)
        self.kid = Thumbprints.of(cert).x5t
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")

    def jwks(self, issuer: str) -> dict[str, Any]:
        numbers = self.public_key.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.kid,
                    "x5t": self.kid,
                    "n": _int_b64(numbers.n),
                    "e": _int_b64(numbers.e),
                    "x5c": [self._x5c],
                    "issuer": issuer,
                }
            ]
        }

    def issue(self, claims: dict[str, Any], lifetime: int = ACCESS_TOKEN_LIFETIME) -> str:
        now = int(time.time())
        body = {"iat": now, "nbf": now, "exp": now + lifetime, "uti": uuid.uuid4().hex, **claims}
        return jwt.encode(body, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid, "typ": "JWT"})

    def verify(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """The claims of a token this stand-in issued, still valid (for ``audience`` if given)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=audience,
                options={"verify_aud": audience is not None, "require": ["exp", "iss", "tid"]},
                leeway=dt.timedelta(seconds=30),
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidAccessToken("Token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidAccessToken(f"Invalid audience. Expected {audience}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidAccessToken(f"Invalid token: {exc}") from exc
        return claims
