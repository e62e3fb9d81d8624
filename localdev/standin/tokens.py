"""The stand-in's token signing key: issues RS256 tokens, publishes the public key as JWKS, verifies tokens.

:class:`Signer` issues the access tokens of every grant (and OAuth's id tokens), serves its key at the JWKS
endpoints (with ``x5c``; ``kid`` and ``x5t`` are the certificate's thumbprint) and verifies the bearer tokens
Graph and Key Vault receive. A token's signature, claims and audience are checked once and remembered
(up to ``VERIFIED_LIMIT`` tokens); later uses of it only have its times checked again, against ``clock``.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from localdev.standin.pki import Thumbprints, b64url, new_rsa_key, self_signed

ACCESS_TOKEN_LIFETIME = 3599
LEEWAY = dt.timedelta(seconds=30)
VERIFIED_LIMIT = 4096  # tokens whose signature was checked, kept so that the next request with one is cheap


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
        self._verified: OrderedDict[tuple[str, str | None], dict[str, Any]] = OrderedDict()
        self._verified_lock = threading.Lock()
        self.clock: Callable[[], float] = time.time  # what "now" is when a known token's times are checked again

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
        """The claims of a token this stand-in issued, still valid (for ``audience`` if given).

        A client sends the same token with many requests. Its signature, format, required claims and audience
        cannot change, so they are checked once per token (and audience): later requests with it only have its
        times checked again, as on the first, which answers the same and saves the RSA verification and
        PyJWT's character-by-character base64 checks (about half of a Key Vault or Graph request's CPU here)."""
        key = (token, audience)
        with self._verified_lock:
            known = self._verified.get(key)
            if known is not None:
                self._verified.move_to_end(key)
        if known is not None:
            _check_times(known, self.clock())
            return dict(known)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=audience,
                options={"verify_aud": audience is not None, "require": ["exp", "iss", "tid"]},
                leeway=LEEWAY,
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidAccessToken("Token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidAccessToken(f"Invalid audience. Expected {audience}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidAccessToken(f"Invalid token: {exc}") from exc
        with self._verified_lock:
            self._verified[key] = claims
            if len(self._verified) > VERIFIED_LIMIT:
                self._verified.popitem(last=False)
        return dict(claims)


def _check_times(claims: dict[str, Any], now: float) -> None:
    """PyJWT's time checks (iat, nbf, exp, with the same leeway), with the answers :meth:`Signer.verify` gives."""
    leeway = LEEWAY.total_seconds()
    for name in ("iat", "nbf"):
        if name in claims and int(claims[name]) > now + leeway:
            raise InvalidAccessToken(f"Invalid token: The token is not yet valid ({name})")
    if int(claims["exp"]) <= now - leeway:
        raise InvalidAccessToken("Token expired")
