"""Access tokens are checked in the service: signature by the tenant's published keys, issuer, audience, times,
RS256 only; roles come from the ``roles`` claim, optionally limited to one app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shared import jws
from shared.auth import KEYS_HARD_MAX_AGE_SECONDS, Principal, SigningKeys, TokenValidator, authorize
from shared.errors import Forbidden, ServiceMisconfigured, Unauthorized
from shared.settings import load_settings

TENANT = "11111111-1111-1111-1111-111111111111"
API = "22222222-2222-2222-2222-222222222222"
AUTHORITY = "https://login.example"
ISSUER = f"{AUTHORITY}/{TENANT}/v2.0"
STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
ROOT = Path(__file__).resolve().parents[2]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY, OTHER_KEY = _key(), _key()


class Tenant:
    """The tenant's OIDC documents, as fetched; counts the fetches."""

    def __init__(self) -> None:
        self.keys = {"k1": KEY}
        self.fetches = 0

    async def fetch(self, url: str) -> Any:
        self.fetches += 1
        if url.endswith("openid-configuration"):
            assert url == f"{ISSUER}/.well-known/openid-configuration"
            return {"issuer": ISSUER, "jwks_uri": f"{AUTHORITY}/{TENANT}/discovery/v2.0/keys"}
        return {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid}
                         for kid, key in self.keys.items()]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _validator(tenant: Tenant, clock: Clock | None = None, **env: str) -> TokenValidator:
    return _validator_and_keys(tenant, clock, **env)[0]


def _validator_and_keys(tenant: Tenant, clock: Clock | None = None, **env: str) -> tuple[TokenValidator, SigningKeys]:
    settings = load_settings({**STORAGE, "AZURE_AUTHORITY_HOST": AUTHORITY, "AUTH_TENANT_ID": TENANT,
                              "AUTH_AUDIENCE": API, **env})
    keys = SigningKeys(settings, tenant.fetch, monotonic=clock or Clock())
    return TokenValidator(settings, keys), keys


def token(claims: dict[str, Any] | None = None, key: rsa.RSAPrivateKey = KEY, kid: str = "k1",
          alg: str = "RS256") -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": API, "tid": TENANT, "azp": "client-app", "oid": "u1", "sub": "u1", "name": "Ada",
            "preferred_username": "ada@contoso.example", "roles": ["AppConnections.Reader"], "iat": now,
            "nbf": now, "exp": now + 3600, **(claims or {})}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def test_a_valid_token_of_a_person_names_them_and_their_roles() -> None:
    principal = await _validator(Tenant()).validate(f"Bearer {token()}")
    assert principal == Principal("u1", "ada@contoso.example", "user", TENANT,
                                  frozenset({"AppConnections.Reader"}))


@pytest.mark.parametrize("claims", [
    {"azp": None},  # Entra's ID tokens name no client (azp, v1 appid): access tokens always do
    {"nonce": "n-1"},  # an ID token of the authorization code flow echoes its nonce; no access token has one
])
async def test_an_id_token_for_this_api_is_no_bearer_token(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized, match="not an access token") as refused:
        await _validator(Tenant()).validate(f"Bearer {token(claims)}")
    assert refused.value.status == 401 and "WWW-Authenticate" in refused.value.headers


async def test_a_v1_access_token_names_its_client_by_appid() -> None:
    assert await _validator(Tenant()).validate(f"Bearer {token({'azp': None, 'appid': 'client-app'})}")


async def test_an_app_only_token_is_a_daemon() -> None:
    claims = {"idtyp": "app", "azp": "33333333-3333-3333-3333-333333333333", "name": None,
              "preferred_username": None, "roles": ["AppConnections.Admin"]}
    principal = await _validator(Tenant()).validate(f"Bearer {token(claims)}")
    assert principal.type == "app"
    assert principal.name == "33333333-3333-3333-3333-333333333333"


async def test_both_audience_forms_are_accepted() -> None:
    await _validator(Tenant()).validate(f"Bearer {token({'aud': f'api://{API}'})}")
    await _validator(Tenant(), AUTH_AUDIENCE=f"api://{API}").validate(f"Bearer {token({'aud': API})}")


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": -600}, "expired"),  # seconds from now, when the test runs
    ({"nbf": 600}, "not valid yet"),
    ({"aud": "44444444-4444-4444-4444-444444444444"}, "audience"),
    ({"iss": f"{AUTHORITY}/99999999-9999-9999-9999-999999999999/v2.0"}, "issuer"),
    ({"exp": None}, "not valid"),
])
async def test_bad_claims_are_refused_with_401_and_a_bearer_challenge(claims: dict[str, Any], reason: str) -> None:
    claims = {k: int(time.time()) + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    with pytest.raises(Unauthorized) as refused:
        await _validator(Tenant()).validate(f"Bearer {token({k: v for k, v in claims.items() if v is not None})}"
                                            if claims != {"exp": None} else "Bearer " + _without_exp())
    assert reason in refused.value.detail
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def _without_exp() -> str:
    body = {"iss": ISSUER, "aud": API, "oid": "u1", "roles": []}
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1"})


async def test_a_forged_signature_is_refused() -> None:
    with pytest.raises(Unauthorized):
        await _validator(Tenant()).validate(f"Bearer {token(key=OTHER_KEY)}")


async def test_alg_none_is_refused() -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    unsigned = f"{b64({'alg': 'none', 'kid': 'k1'})}.{b64({'iss': ISSUER, 'aud': API, 'exp': 9999999999})}."
    with pytest.raises(Unauthorized) as refused:
        await _validator(Tenant()).validate(f"Bearer {unsigned}")
    assert "RS256" in refused.value.detail


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    public = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "k1"}).encode()).decode().rstrip("=")
    payload = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "aud": API, "exp": 9999999999}).encode())
    signing_input = f"{header}.{payload.decode().rstrip('=')}"
    signature = base64.urlsafe_b64encode(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())
    with pytest.raises(Unauthorized):
        await _validator(Tenant()).validate(f"Bearer {signing_input}.{signature.decode().rstrip('=')}")


async def test_an_unknown_kid_refetches_the_keys_at_most_once_a_minute() -> None:
    tenant, clock = Tenant(), Clock()
    validator = _validator(tenant, clock)
    await validator.validate(f"Bearer {token()}")
    assert tenant.fetches == 2  # discovery and keys
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await validator.validate(f"Bearer {token(kid='k2', key=OTHER_KEY)}")
    assert tenant.fetches == 2, "an unknown kid within the minute fetches nothing"
    tenant.keys["k2"] = OTHER_KEY  # the tenant rolled its keys
    clock.now += 61
    await validator.validate(f"Bearer {token(kid='k2', key=OTHER_KEY)}")
    assert tenant.fetches == 4


async def test_a_missing_or_malformed_header_is_a_401() -> None:
    validator = _validator(Tenant())
    for header in (None, "", "Basic abc", "Bearer", "Bearer not-a-jwt"):
        with pytest.raises(Unauthorized) as refused:
            await validator.validate(header)
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_with_a_lone_surrogate_is_a_401_not_a_500() -> None:
    """(Fuzzing review.) The token was hashed (to look it up among those checked) as UTF-8 before it was parsed: a
    lone surrogate, which no token holds, raised there and the caller had a 500."""
    with pytest.raises(Unauthorized) as refused:
        await _validator(Tenant()).validate("Bearer a\ud800b")
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


async def test_without_the_auth_settings_there_is_no_open_mode() -> None:
    settings = load_settings(STORAGE)
    validator = TokenValidator(settings, SigningKeys(settings, Tenant().fetch))
    with pytest.raises(ServiceMisconfigured) as refused:
        await validator.validate(f"Bearer {token()}")
    assert refused.value.status == 503
    assert "AUTH_TENANT_ID" in refused.value.detail


@pytest.mark.parametrize(("authority", "jwks_uri"), [
    ("https://login.example:443", f"https://login.example/{TENANT}/discovery/v2.0/keys"),
    ("https://login.example", f"https://LOGIN.example:443/{TENANT}/discovery/v2.0/keys"),
    ("https://login.example", f"https://login.example./{TENANT}/discovery/v2.0/keys"),
])
def test_the_authority_s_own_host_is_recognised_however_its_port_and_case_are_written(authority: str,
                                                                                      jwks_uri: str) -> None:
    """(Review of the outbound fixes, 3.) ``AZURE_AUTHORITY_HOST=https://login.microsoftonline.com:443`` refused
    Entra's own key set, whose URL names no port: every token was then refused."""
    from shared.auth import _on_host_of

    assert _on_host_of(jwks_uri, f"{authority}/{TENANT}/v2.0/.well-known/openid-configuration")


@pytest.mark.parametrize("jwks_uri", [
    f"http://login.example/{TENANT}/discovery/v2.0/keys",  # in clear text: anyone on the way serves keys
    f"https://keys.elsewhere.example/{TENANT}/discovery/v2.0/keys",
    f"https://login.example.elsewhere.example/{TENANT}/keys",
    f"https://login.example:8443/{TENANT}/keys",
    f"https://someone@login.example/{TENANT}/keys",
    "//login.example/keys",
])
async def test_signing_keys_are_read_only_from_the_authority_over_https(jwks_uri: str) -> None:
    """(Review SSRF 1.) The discovery document's ``jwks_uri`` was fetched wherever it pointed, over http too, and any
    key served there checked the API's tokens."""
    tenant = Tenant()
    fetched: list[str] = []

    async def fetch(url: str) -> Any:
        fetched.append(url)
        if url.endswith("openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": jwks_uri}
        return await tenant.fetch(url)

    settings = load_settings({**STORAGE, "AZURE_AUTHORITY_HOST": AUTHORITY, "AUTH_TENANT_ID": TENANT,
                              "AUTH_AUDIENCE": API})
    validator = TokenValidator(settings, SigningKeys(settings, fetch, monotonic=Clock()))
    with pytest.raises(ServiceMisconfigured, match="signing keys elsewhere") as refused:
        await validator.validate(f"Bearer {token()}")
    assert refused.value.status == 503 and fetched == [f"{ISSUER}/.well-known/openid-configuration"]


@pytest.mark.parametrize(("roles", "role", "app", "granted"), [
    ({"AppConnections.Admin"}, "Writer", "azure-key-vault", "AppConnections.Admin"),
    ({"AppConnections.Writer"}, "Writer", "azure-key-vault", "AppConnections.Writer"),
    ({"AppConnections.Writer.azure-key-vault"}, "Writer", "azure-key-vault", "AppConnections.Writer.azure-key-vault"),
    ({"AppConnections.Writer.azure-key-vault"}, "Writer", "azure-client-secrets", None),
    ({"AppConnections.Writer.azure-key-vault"}, "Writer", None, None),
    ({"AppConnections.Reader"}, "Writer", "azure-key-vault", None),
    ({"AppConnections.Admin.azure-key-vault"}, "Rotator", "azure-key-vault", "AppConnections.Admin.azure-key-vault"),
    (set(), "Reader", None, None),
])
def test_roles_grant_what_they_name_and_an_app_suffix_limits_them(roles: set[str], role: str, app: str | None,
                                                                     granted: str | None) -> None:
    principal = Principal("u", "u", "user", TENANT, frozenset(roles))
    assert principal.grant(role, app) == granted
    if granted is None:
        with pytest.raises(Forbidden) as refused:
            authorize(principal, role, app)
        assert refused.value.extensions["requiredRole"] == f"AppConnections.{role}"
        assert refused.value.status == 403
    else:
        assert authorize(principal, role, app) == granted


class WallClock:
    """The validator's wall clock (epoch seconds), moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _counting(validator: TokenValidator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature is checked (``shared.jws.verify``), in order."""
    checked: list[str] = []
    verify = jws.verify

    def counted(signed: jws.SignedToken, *args: Any, **kwargs: Any) -> Any:
        signature = base64.urlsafe_b64encode(signed.signature).decode().rstrip("=")
        checked.append(f"{signed.signing_input.decode()}.{signature}")
        return verify(signed, *args, **kwargs)

    monkeypatch.setattr(jws, "verify", counted)
    return checked


async def test_a_token_that_passed_is_not_checked_again_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = WallClock()
    settings = load_settings({**STORAGE, "AZURE_AUTHORITY_HOST": AUTHORITY, "AUTH_TENANT_ID": TENANT,
                              "AUTH_AUDIENCE": API})
    validator = TokenValidator(settings, SigningKeys(settings, Tenant().fetch, monotonic=Clock()), now=clock)
    checked = _counting(validator, monkeypatch)
    issued = int(clock.now)
    raw = token({"exp": issued + 600})
    first = await validator.validate(f"Bearer {raw}")
    assert await validator.validate(f"Bearer {raw}") == first
    assert checked == [raw]  # the second time, the principal was remembered

    other = token({"oid": "u2", "exp": issued + 600})
    assert (await validator.validate(f"Bearer {other}")).id == "u2"  # another token is checked on its own
    assert checked == [raw, other]

    clock.now = issued + 600  # at exp, the token is checked in full again (it is still within the clock skew)
    assert await validator.validate(f"Bearer {raw}") == first
    assert checked == [raw, other, raw]


async def test_a_refused_token_is_refused_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    validator = _validator(Tenant())
    checked = _counting(validator, monkeypatch)
    forged = token(key=OTHER_KEY)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await validator.validate(f"Bearer {forged}")
    assert checked == [forged, forged]


async def test_a_token_whose_signature_is_changed_is_not_taken_for_the_remembered_one() -> None:
    validator = _validator(Tenant())
    raw = token()
    await validator.validate(f"Bearer {raw}")
    head, body, signature = raw.split(".")
    tampered = ".".join([head, body, ("A" if signature[0] != "A" else "B") + signature[1:]])
    with pytest.raises(Unauthorized):
        await validator.validate(f"Bearer {tampered}")


async def test_the_remembered_tokens_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.auth.VALIDATED_CACHE_SIZE", 2)
    validator = _validator(Tenant())
    checked = _counting(validator, monkeypatch)
    tokens = [token({"oid": f"u{n}"}) for n in range(3)]
    for raw in tokens:
        await validator.validate(f"Bearer {raw}")
    await validator.validate(f"Bearer {tokens[0]}")  # the oldest was let go: checked again
    await validator.validate(f"Bearer {tokens[2]}")  # still remembered
    assert checked == [*tokens, tokens[0]]


# The token format, checked by shared.jws: each case names the 401 a caller reads.

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(**changes: Any) -> dict[str, Any]:
    """A valid access token's claims, changed (a value of ``...`` leaves the claim out)."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": API, "tid": TENANT, "azp": "client-app", "oid": "u1", "sub": "u1",
            "roles": ["AppConnections.Reader"],
            "iat": now, "nbf": now, "exp": now + 3600, **changes}
    return {name: value for name, value in body.items() if value is not ...}


def signed(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: rsa.RSAPrivateKey = KEY) -> str:
    """A compact JWS of exactly these header and payload bytes, signed RS256 (whatever the header says)."""
    head = _b64(header if isinstance(header, bytes) else json.dumps(header).encode())
    body = _b64(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64(signature)}"


RS256_K1 = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
NOT_A_JWT = "The access token is not a JWT."
NOT_RS256 = "The access token is not signed with RS256."
UNKNOWN_KEY = "The access token is signed with a key the tenant does not publish."
NOT_VALID = "The access token's signature or claims are not valid."
EXPIRED = "The access token has expired."
NOT_YET = "The access token is not valid yet."
AUDIENCE = "The access token is for another API (audience)."
ISSUER_MSG = "The access token comes from another issuer."


def _tampered_payload() -> str:
    head, _, signature = signed(RS256_K1, _claims()).split(".")
    return f"{head}.{_b64(json.dumps(_claims(roles=['AppConnections.Admin'])).encode())}.{signature}"


def _tampered_signature() -> str:
    head, body, signature = signed(RS256_K1, _claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 1
    return f"{head}.{body}.{_b64(bytes(raw))}"


def _hs256_with_the_public_key() -> str:
    public = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': 'k1'}).encode())}.{_b64(json.dumps(_claims()).encode())}"
    return f"{signing_input}.{_b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"


REFUSED: dict[str, tuple[Callable[[], str], str]] = {
    "payload changed after signing": (_tampered_payload, NOT_VALID),
    "signature changed": (_tampered_signature, NOT_VALID),
    "signed by another key under our kid": (lambda: signed(RS256_K1, _claims(), OTHER_KEY), NOT_VALID),
    "alg none, empty signature": (lambda: signed({"alg": "none", "kid": "k1"}, _claims()).rsplit(".", 1)[0] + ".",
                                  NOT_RS256),
    "alg none, any signature": (lambda: signed({"alg": "none", "kid": "k1"}, _claims()), NOT_RS256),
    "HS256 keyed with the public key": (_hs256_with_the_public_key, NOT_RS256),
    "RS384": (lambda: jwt.encode(_claims(), KEY, algorithm="RS384", headers={"kid": "k1"}), NOT_RS256),
    "PS256": (lambda: jwt.encode(_claims(), KEY, algorithm="PS256", headers={"kid": "k1"}), NOT_RS256),
    "alg missing": (lambda: signed({"kid": "k1"}, _claims()), NOT_RS256),
    "alg in another case": (lambda: signed({"alg": "rs256", "kid": "k1"}, _claims()), NOT_RS256),
    "kid missing": (lambda: signed({"alg": "RS256"}, _claims()), UNKNOWN_KEY),
    "kid unknown": (lambda: signed({"alg": "RS256", "kid": "k9"}, _claims()), UNKNOWN_KEY),
    "kid not a string": (lambda: signed({"alg": "RS256", "kid": 1}, _claims()), NOT_A_JWT),
    "a critical header": (lambda: signed({**RS256_K1, "crit": ["exp"], "exp": 1}, _claims()), NOT_VALID),
    "an unencoded payload": (lambda: signed({**RS256_K1, "b64": False}, _claims()), NOT_VALID),
    "expired beyond the skew": (lambda: signed(RS256_K1, _claims(exp=int(time.time()) - 200)), EXPIRED),
    "not before, beyond the skew": (lambda: signed(RS256_K1, _claims(nbf=int(time.time()) + 200)), NOT_YET),
    "issued in the future": (lambda: signed(RS256_K1, _claims(iat=int(time.time()) + 200)), NOT_YET),
    "another issuer": (lambda: signed(RS256_K1, _claims(iss=f"{AUTHORITY}/{TENANT}/v2.0/")), ISSUER_MSG),
    "issuer not a string": (lambda: signed(RS256_K1, _claims(iss=[ISSUER])), ISSUER_MSG),
    "audiences without ours": (lambda: signed(RS256_K1, _claims(aud=["api://other", "x"])), AUDIENCE),
    "audience not a string": (lambda: signed(RS256_K1, _claims(aud=[API, 1])), AUDIENCE),
    "exp as a string": (lambda: signed(RS256_K1, _claims(exp=str(int(time.time()) + 3600))), NOT_VALID),
    "exp as a boolean": (lambda: signed(RS256_K1, _claims(exp=True)), NOT_VALID),
    "nbf as a boolean": (lambda: signed(RS256_K1, _claims(nbf=False)), NOT_VALID),
    "exp missing": (lambda: signed(RS256_K1, _claims(exp=...)), NOT_VALID),
    "exp null": (lambda: signed(RS256_K1, _claims(exp=None)), NOT_VALID),
    "iss missing": (lambda: signed(RS256_K1, _claims(iss=...)), NOT_VALID),
    "aud missing": (lambda: signed(RS256_K1, _claims(aud=...)), NOT_VALID),
    "exp infinite": (lambda: signed(RS256_K1, json.dumps(_claims(exp=float("inf"))).encode()), NOT_A_JWT),
    "two parts": (lambda: signed(RS256_K1, _claims()).rsplit(".", 1)[0], NOT_A_JWT),
    "four parts": (lambda: signed(RS256_K1, _claims()) + ".e30", NOT_A_JWT),
    "bad base64": (lambda: "ey!!." + signed(RS256_K1, _claims()).split(".", 1)[1], NOT_A_JWT),
    "padded base64": (lambda: signed(RS256_K1, _claims()) + "=", NOT_A_JWT),
    "header not JSON": (lambda: signed(b"{alg: RS256}", _claims()), NOT_A_JWT),
    "header not an object": (lambda: signed(b'["RS256"]', _claims()), NOT_A_JWT),
    "header with a member twice": (lambda: signed(b'{"alg":"none","alg":"RS256","kid":"k1"}', _claims()), NOT_A_JWT),
    "payload not JSON (signed)": (lambda: signed(RS256_K1, b"not json"), NOT_A_JWT),
    "payload not an object (signed)": (lambda: signed(RS256_K1, b'"claims"'), NOT_A_JWT),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_a_token_that_fails_a_check_is_refused_saying_which(case: str) -> None:
    make, detail = REFUSED[case]
    with pytest.raises(Unauthorized) as refused:
        await _validator(Tenant()).validate(f"Bearer {make()}")
    assert refused.value.detail == detail
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("claims", [
    {"exp": -60},  # expired a minute ago: within the clock skew
    {"nbf": 60},  # valid in a minute: within the clock skew
    {"iat": 60},
    {"aud": ["api://other", API]},
    {"aud": [f"api://{API}"]},
    {"exp": 3600.5},  # NumericDate may have a fraction
])
async def test_tokens_within_the_skew_or_naming_us_among_others_are_accepted(claims: dict[str, Any]) -> None:
    now = int(time.time())
    changed = {k: now + v if k in ("exp", "nbf", "iat") else v for k, v in claims.items()}
    principal = await _validator(Tenant()).validate(f"Bearer {signed(RS256_K1, _claims(**changed))}")
    assert principal.id == "u1"


async def test_a_huge_token_is_refused_before_any_parsing() -> None:
    head, body, signature = signed(RS256_K1, _claims(padding="x" * 20000)).split(".")
    with pytest.raises(Unauthorized) as refused:
        await _validator(Tenant()).validate(f"Bearer {head}.{body}.{signature}")
    assert refused.value.detail == "The access token is too long."
    with pytest.raises(Unauthorized) as refused:
        await _validator(Tenant()).claims(f"{head}.{body}.{signature}")
    assert refused.value.detail == "The token is too long."


async def test_keys_the_tenant_publishes_that_are_not_rs256_signing_keys_verify_nothing() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    class Published(Tenant):
        async def fetch(self, url: str) -> Any:
            document = await super().fetch(url)
            if "keys" not in document:
                return document
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
            return {"keys": [*document["keys"],
                             {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small.public_key())), "kid": "small"},
                             {**jwk, "kid": "enc", "use": "enc"}, {**jwk, "kid": "rs384", "alg": "RS384"},
                             {**jwk, "kid": "no-n", "n": None}, {"kty": "oct", "kid": "secret", "k": _b64(b"s" * 32)},
                             "not a key", {**jwk, "kid": 5}]}

    validator = _validator(Published())
    for kid, key in [("small", small), ("enc", KEY), ("rs384", KEY), ("no-n", KEY), ("secret", KEY)]:
        with pytest.raises(Unauthorized) as refused:
            await validator.validate(f"Bearer {signed({'alg': 'RS256', 'kid': kid}, _claims(), key)}")
        assert refused.value.detail == UNKNOWN_KEY, kid
    assert (await validator.validate(f"Bearer {signed(RS256_K1, _claims())}")).id == "u1"


@pytest.mark.parametrize("key_set", [{"keys": 5}, {"keys": "k1"}, {"keys": None}, {}, [], "keys", None])
async def test_a_key_set_that_is_not_one_publishes_no_key(key_set: Any) -> None:
    class Odd(Tenant):
        async def fetch(self, url: str) -> Any:
            return await super().fetch(url) if url.endswith("openid-configuration") else key_set

    with pytest.raises(Unauthorized) as refused:
        await _validator(Odd()).validate(f"Bearer {token()}")
    assert refused.value.detail == UNKNOWN_KEY


async def test_the_first_key_fetch_imports_cryptography_in_a_thread_alongside_the_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The import runs while the discovery document is awaited: both have started before either ends."""
    events: list[str] = []
    loaded = threading.Event()

    def load() -> None:
        events.append("import started")
        loaded.wait(5)
        events.append("import done")

    class Slow(Tenant):
        async def fetch(self, url: str) -> Any:
            events.append(f"fetch {url.rsplit('/', 1)[1]}")
            await asyncio.sleep(0.05)
            if url.endswith("keys"):
                loaded.set()
            return await super().fetch(url)

    monkeypatch.setattr(jws, "load_crypto", load)
    tenant, clock = Slow(), Clock()
    validator = _validator(tenant, clock)
    await validator.validate(f"Bearer {token()}")
    assert events.index("import started") < events.index("fetch keys") < events.index("import done")
    events.clear()
    tenant.keys["k2"] = OTHER_KEY
    clock.now += 61  # a later fetch, for a new kid, has the import behind it
    await validator.validate(f"Bearer {token(kid='k2', key=OTHER_KEY)}")
    assert events == ["fetch openid-configuration", "fetch keys"]


IMPORT_AUTH = """
import json, sys
import shared.auth
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("jwt", "cryptography"))))
"""


def test_importing_the_token_check_imports_neither_pyjwt_nor_cryptography() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORT_AUTH], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# Differential: on a corpus of tokens, the verdict is the one today's PyJWT check gives, except where we are
# deliberately stricter (each such case is named below, and PyJWT is shown to accept it).

def _pyjwt_accepts(raw: str) -> bool:
    """The check of shared.auth before shared.jws, with PyJWT: header, RS256, known kid, then jwt.decode."""
    try:
        header = jwt.get_unverified_header(raw)
        if header.get("alg") != "RS256" or header.get("kid") != "k1":
            return False
        jwt.decode(raw, KEY.public_key(), algorithms=["RS256"], audience=[API, f"api://{API}"], issuer=ISSUER,
                   leeway=120, options={"require": ["exp", "iss", "aud"]})
    except jwt.PyJWTError:
        return False
    return True


def _corpus() -> dict[str, str]:
    now = int(time.time())
    claim_variants: dict[str, dict[str, Any]] = {
        "valid": {}, "exp -119": {"exp": now - 100}, "exp -130": {"exp": now - 130}, "exp -1h": {"exp": now - 3600},
        "exp float": {"exp": now + 10.5}, "exp missing": {"exp": ...}, "exp null": {"exp": None},
        "exp huge": {"exp": 10**30}, "exp 400 digits": {"exp": 10**400},
        "exp 1e400": {"exp": ...}, "exp list": {"exp": [now + 60]}, "nbf +100": {"nbf": now + 100},
        "nbf +130": {"nbf": now + 130}, "nbf null": {"nbf": None}, "iat +130": {"iat": now + 130},
        "iat text": {"iat": "yesterday"}, "iss other": {"iss": "https://sts.windows.net/x/"},
        "iss missing": {"iss": ...},
        "iss null": {"iss": None}, "iss number": {"iss": 1}, "aud api uri": {"aud": f"api://{API}"},
        "aud list ours": {"aud": ["x", API]}, "aud list other": {"aud": ["x", "y"]}, "aud empty list": {"aud": []},
        "aud empty": {"aud": ""}, "aud missing": {"aud": ...}, "aud number": {"aud": 5},
        "aud list with number": {"aud": [API, 5]}, "aud object": {"aud": {"a": API}}, "sub number": {"sub": 7},
        "jti number": {"jti": 7}, "jti text": {"jti": "abc"}, "roles odd": {"roles": "x"},
    }
    corpus = {f"claims {name}": signed(RS256_K1, _claims(**changes)) for name, changes in claim_variants.items()}
    corpus["claims exp 1e400"] = signed(RS256_K1, json.dumps(_claims(exp=...)).encode()[:-1] + b', "exp": 1e400}')
    header_variants: dict[str, dict[str, Any]] = {
        "no typ": {"alg": "RS256", "kid": "k1"}, "kid k2": {"alg": "RS256", "kid": "k2"},
        "no kid": {"alg": "RS256"}, "kid number": {"alg": "RS256", "kid": 1},
        "alg RS512": {"alg": "RS512", "kid": "k1"},
        "alg ES256": {"alg": "ES256", "kid": "k1"}, "alg HS256": {"alg": "HS256", "kid": "k1"},
        "alg none": {"alg": "none", "kid": "k1"}, "alg null": {"alg": None, "kid": "k1"},
        "jku elsewhere": {**RS256_K1, "jku": "https://evil.example/keys"}, "x5c junk": {**RS256_K1, "x5c": ["AAAA"]},
        "crit empty": {**RS256_K1, "crit": []}, "crit unknown": {**RS256_K1, "crit": ["x"], "x": 1},
        "b64 false": {**RS256_K1, "b64": False},
    }
    corpus |= {f"header {name}": signed(header, _claims()) for name, header in header_variants.items()}
    valid = signed(RS256_K1, _claims())
    head, body, signature = valid.split(".")
    corpus |= {
        "other key": signed(RS256_K1, _claims(), OTHER_KEY), "payload swapped": _tampered_payload(),
        "signature flipped": _tampered_signature(), "signature cut": f"{head}.{body}.{signature[:-4]}",
        "signature empty": f"{head}.{body}.", "signature of another token": f"{head}.{body}."
        + signed(RS256_K1, _claims(oid="u2")).split(".")[2], "two parts": f"{head}.{body}",
        "four parts": f"{valid}.{signature}", "one part": head, "empty": "", "dots": "..",
        "bad char": f"{head}.{body}.{signature[:-1]}*", "space": f"{head}.{body} .{signature}",
        "non-ascii": f"{head}.{body}.{signature[:-1]}é", "length 4n+1": f"{head}.{body}.{signature}A",
        "header not json": signed(b"alg=RS256", _claims()), "header array": signed(b"[]", _claims()),
        "payload not json": signed(RS256_K1, b"{"), "payload array": signed(RS256_K1, b"[1]"),
        "payload latin-1": signed(RS256_K1, b'{"name":"\xe9"}'),
        "deep header": signed(b"[" * 3000 + b"]" * 3000, b"{}"),
        "HS256 public key": _hs256_with_the_public_key(),
        "PS256": jwt.encode(_claims(), KEY, algorithm="PS256", headers={"kid": "k1"}),
    }
    return corpus


def _padded(raw: str) -> str:
    signature = raw.rsplit(".", 1)[1]
    assert len(signature) % 4, "a 2048-bit signature's base64url needs padding"
    return raw + "=" * (-len(signature) % 4)


STRICTER = {
    # Claim types: a NumericDate is a JSON number (RFC 7519 2); PyJWT takes int("1767225600") and int(True).
    "exp as text": lambda: signed(RS256_K1, _claims(exp=str(int(time.time()) + 3600))),
    "nbf as a boolean": lambda: signed(RS256_K1, _claims(nbf=True)),
    "iat as text": lambda: signed(RS256_K1, _claims(iat=str(int(time.time())))),
    # One spelling per token: no base64 padding (RFC 7515 2), no member twice (RFC 7515 5.2), no NaN.
    "padded signature": lambda: _padded(signed(RS256_K1, _claims())),
    "NaN in the header": lambda: signed(b'{"alg":"RS256","kid":"k1","x":NaN}', _claims()),
    "payload member twice": lambda: signed(RS256_K1, json.dumps(_claims()).encode()[:-1] + b', "aud": "' + API.encode()
                                           + b'"}'),
    "NaN in the payload": lambda: signed(RS256_K1, json.dumps(_claims()).encode()[:-1] + b', "x": NaN}'),
    # No critical extension is understood here, not even b64 (RFC 7797).
    "crit b64 true": lambda: signed({**RS256_K1, "crit": ["b64"], "b64": True}, _claims()),
}


async def test_the_verdict_on_a_corpus_of_tokens_is_the_one_pyjwt_gave() -> None:
    validator = _validator(Tenant())
    verdicts: dict[str, tuple[bool, bool]] = {}
    for name, raw in _corpus().items():
        try:
            await validator.claims(raw)
            ours = True
        except Unauthorized:
            ours = False
        verdicts[name] = (ours, _pyjwt_accepts(raw))
    assert {name for name, (ours, theirs) in verdicts.items() if ours != theirs} == set()
    accepted = {name for name, (ours, _) in verdicts.items() if ours}
    assert accepted == {"claims valid", "claims exp -119", "claims exp float", "claims exp huge",
                        "claims exp 400 digits", "claims nbf +100",
                        "claims aud api uri", "claims aud list ours", "claims jti text", "claims roles odd",
                        "header no typ", "header jku elsewhere", "header x5c junk"}


@pytest.mark.parametrize("case", STRICTER)
async def test_where_pyjwt_is_lenient_we_refuse(case: str) -> None:
    raw = STRICTER[case]()
    assert _pyjwt_accepts(raw), "PyJWT accepts it (else this is not a difference)"
    with pytest.raises(Unauthorized):
        await _validator(Tenant()).claims(raw)


async def test_the_keys_are_read_again_after_a_day_so_a_withdrawn_key_stops_working() -> None:
    """The first request after the day starts the read behind it and is answered with the keys read before; once
    the read lands, the withdrawn key verifies nothing."""
    tenant, clock = Tenant(), Clock()
    validator, keys = _validator_and_keys(tenant, clock)
    await validator.validate(f"Bearer {token()}")
    del tenant.keys["k1"]  # Entra withdrew it (an emergency rollover)
    tenant.keys["k2"] = OTHER_KEY
    clock.now += 23 * 3600
    assert await validator.validate(f"Bearer {token({'oid': 'u2'})}")  # within the day: the keys read before
    clock.now += 3600
    assert await validator.validate(f"Bearer {token({'oid': 'u3'})}")  # the day is over: the read starts behind it
    await keys.settled()
    with pytest.raises(Unauthorized):
        await validator.validate(f"Bearer {token({'oid': 'u4'})}")
    assert tenant.fetches == 4


async def test_keys_past_the_day_and_an_hour_are_read_again_before_the_request_is_answered() -> None:
    """An instance with no request between (keys a day and an hour old): the request waits for the read."""
    tenant, clock = Tenant(), Clock()
    validator = _validator(tenant, clock)
    await validator.validate(f"Bearer {token()}")
    del tenant.keys["k1"]
    tenant.keys["k2"] = OTHER_KEY
    clock.now += KEYS_HARD_MAX_AGE_SECONDS
    with pytest.raises(Unauthorized):
        await validator.validate(f"Bearer {token({'oid': 'u2'})}")
    assert tenant.fetches == 4


async def test_a_remembered_token_is_refused_once_the_key_it_was_verified_with_is_withdrawn() -> None:
    """Found by a review: a token once accepted was remembered until its expiry, whatever became of its key: one
    signed with a leaked key (and a far expiry) stayed an administrator's after the key was withdrawn."""
    tenant, clock = Tenant(), Clock()
    validator, keys = _validator_and_keys(tenant, clock)
    leaked = token({"roles": ["AppConnections.Admin"], "exp": int(time.time()) + 10 * 365 * 86400})
    assert "AppConnections.Admin" in (await validator.validate(f"Bearer {leaked}")).roles
    assert await validator.validate(f"Bearer {leaked}")  # remembered
    del tenant.keys["k1"]  # Entra withdrew it (an emergency rollover)
    tenant.keys["k2"] = OTHER_KEY
    clock.now += 24 * 3600
    assert await validator.validate(f"Bearer {leaked}")  # the keys are read again, behind this request ...
    await keys.settled()
    with pytest.raises(Unauthorized):  # ... and once they are, the token is refused
        await validator.validate(f"Bearer {leaked}")


async def test_a_key_read_again_unchanged_keeps_the_tokens_verified_with_it_remembered_and_a_changed_one_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review of resource bounds: each read of the keys built new key objects, and a remembered token is
    kept only while its key is the one it was verified with, so anyone could have every remembered token checked in
    full again, once a minute, with a token under a kid the tenant does not publish. A key the same as before (its
    numbers) is the same object; one changed under the same kid is not, and its tokens are checked again."""
    tenant, clock = Tenant(), Clock()
    validator = _validator(tenant, clock)
    verified: list[str] = []
    real = jws.verify

    def counting(signed: Any, *args: Any, **kwargs: Any) -> Any:
        verified.append(signed.signing_input.decode())
        return real(signed, *args, **kwargs)

    monkeypatch.setattr(jws, "verify", counting)
    callers = [token({"oid": f"user-{n}"}) for n in range(5)]
    for raw in callers:
        await validator.validate(f"Bearer {raw}")
    for minute in range(3):
        clock.now += 61
        with pytest.raises(Unauthorized):  # a kid the tenant does not publish: the keys are read again
            await validator.validate(f"Bearer {token(kid=f'nope-{minute}', key=OTHER_KEY)}")
        for raw in callers:
            await validator.validate(f"Bearer {raw}")
    assert len(verified) == 5 and tenant.fetches == 8  # each token once; the keys read four times
    tenant.keys["k1"] = OTHER_KEY  # another key under the same kid
    clock.now += KEYS_HARD_MAX_AGE_SECONDS  # the keys are read again before the first is answered
    for raw in callers:
        with pytest.raises(Unauthorized):
            await validator.validate(f"Bearer {raw}")
    assert len(verified) == 10


class FlakyTenant(Tenant):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def fetch(self, url: str) -> Any:
        if self.down:
            self.fetches += 1
            raise OSError("the authority is down")
        return await super().fetch(url)


async def test_an_authority_that_fails_is_not_asked_again_on_every_request() -> None:
    from shared.errors import UpstreamError

    tenant, clock = FlakyTenant(), Clock()
    validator = _validator(tenant, clock)
    tenant.down = True
    for _ in range(20):  # cold: nothing to serve, a 502 that says so, and one read per ten seconds
        with pytest.raises(UpstreamError, match="signing keys could not be read"):
            await validator.validate(f"Bearer {token()}")
    assert tenant.fetches == 1
    clock.now += 11
    tenant.down = False
    await validator.validate(f"Bearer {token()}")
    tenant.down = True
    clock.now += 25 * 3600  # the keys are due to be read again, and the authority fails: the ones read are kept
    for n in range(20):
        assert await validator.validate(f"Bearer {token({'oid': f'u{n}'})}")
    assert tenant.fetches == 4  # one failed read, the discovery document and the keys, one failed read


class SlowTenant(Tenant):
    """An authority that answers after a network read's pause (a request suspends while the keys are read)."""

    async def fetch(self, url: str) -> Any:
        await asyncio.sleep(0.02)
        return await super().fetch(url)


async def test_requests_with_one_remembered_token_at_the_daily_key_read_are_all_answered() -> None:
    """Requests with the same remembered token when the keys are past the day and the hour all wait on the read.
    The key read again the same, they are answered; once it changed, the first to come back drops the entry, and
    the others must not fail on the entry being gone (they raised KeyError, a 500 to a caller: review U)."""
    tenant, clock = SlowTenant(), Clock()
    validator = _validator(tenant, clock)
    raw = token()
    await validator.validate(f"Bearer {raw}")
    clock.now += KEYS_HARD_MAX_AGE_SECONDS
    principals = await asyncio.gather(*(validator.validate(f"Bearer {raw}") for _ in range(3)))
    assert {p.id for p in principals} == {principals[0].id}
    tenant.keys["k1"] = OTHER_KEY
    clock.now += KEYS_HARD_MAX_AGE_SECONDS
    refused = await asyncio.gather(*(validator.validate(f"Bearer {raw}") for _ in range(3)), return_exceptions=True)
    assert [type(outcome) for outcome in refused] == [Unauthorized] * 3


async def test_requests_at_a_cold_start_read_the_keys_once_between_them() -> None:
    """Requests that come together before any key was read each ask for the documents; the first reads them, and
    the others, waiting on that read, find it completed: one read between them, whether their tokens' kid is in the
    key set or not."""
    tenant = SlowTenant()
    validator = _validator(tenant)
    known, unknown = token(), token(kid="k2", key=OTHER_KEY)
    outcomes = await asyncio.gather(*(validator.validate(f"Bearer {raw}") for raw in (known, unknown, known)),
                                    return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [Principal, Unauthorized, Principal]
    assert tenant.fetches == 2  # the discovery document and the keys, once


class SlowEntra(Tenant):
    """An authority whose discovery document takes a second and a half to come (the clock moves on meanwhile)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    async def fetch(self, url: str) -> Any:
        if url.endswith("openid-configuration"):
            await asyncio.sleep(0.02)
            self.clock.now += 1.5
        return await super().fetch(url)


async def test_requests_at_a_cold_start_read_the_keys_once_however_long_the_read_takes() -> None:
    """Found by the concurrency review: a waiting request skipped the read only when the last one had *begun* under
    a second ago, so with Entra slow (or a 503 retried) each waiting request read the documents again in turn (four
    requests: four reads, six seconds). A request that waited on a read that completed does not read again."""
    clock = Clock()
    tenant = SlowEntra(clock)
    validator = _validator(tenant, clock)
    outcomes = await asyncio.gather(*(validator.validate(f"Bearer {token({'oid': f'u{n}'})}") for n in range(4)))
    assert [type(outcome) for outcome in outcomes] == [Principal] * 4
    assert tenant.fetches == 2  # the discovery document and the keys, once


class GatedTenant(Tenant):
    """An authority that answers once its gate is open (open at first); counts the requests as they come."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked = 0

    async def fetch(self, url: str) -> Any:
        self.asked += 1
        await self.gate.wait()
        return await super().fetch(url)


async def test_the_daily_read_of_the_keys_runs_behind_the_requests_which_go_on_with_the_keys_read_before() -> None:
    """Found by the concurrency review: once the keys were a day old, every request waited on the lock for the whole
    read, even one whose token was remembered a moment ago; with Entra failing, the API stalled for each failed
    read's retries. The first request after the day starts the read in a task and is answered at once, as is every
    request while it runs (no second read); a token under a kid not published yet waits for it, as it always did."""
    tenant, clock = GatedTenant(), Clock()
    validator, keys = _validator_and_keys(tenant, clock)
    remembered = f"Bearer {token()}"
    await validator.validate(remembered)
    tenant.gate.clear()  # Entra does not answer the daily read yet
    clock.now += 24 * 3600
    for n in range(3):
        assert await asyncio.wait_for(validator.validate(remembered), 1)
        assert await asyncio.wait_for(validator.validate(f"Bearer {token({'oid': f'u{n}'})}"), 1)
    assert tenant.asked == 3  # the cold read's two documents, and the daily read's first, once
    new_kid = asyncio.create_task(validator.validate(f"Bearer {token(kid='k2', key=OTHER_KEY)}"))
    await asyncio.sleep(0.05)
    assert not new_kid.done()  # waits for the read: its key may be in it
    del tenant.keys["k1"]  # Entra withdrew it (an emergency rollover) ...
    tenant.keys["k2"] = OTHER_KEY  # ... for this one
    tenant.gate.set()
    assert await asyncio.wait_for(new_kid, 1)
    await keys.settled()
    with pytest.raises(Unauthorized):  # the read landed: the withdrawn key verifies nothing, remembered or not
        await validator.validate(remembered)
    assert tenant.asked == 4  # the waiting request did not read again


async def test_a_daily_read_that_fails_behind_the_requests_keeps_the_keys_and_backs_off(
        caplog: pytest.LogCaptureFixture) -> None:
    from shared.auth import FETCH_BACKOFF_SECONDS

    tenant, clock = FlakyTenant(), Clock()
    validator, keys = _validator_and_keys(tenant, clock)
    await validator.validate(f"Bearer {token()}")
    tenant.down = True
    clock.now += 24 * 3600
    with caplog.at_level("WARNING", logger="shared.auth"):
        for n in range(5):  # the first starts the read; it fails; the others, within the back-off, start none
            assert await validator.validate(f"Bearer {token({'oid': f'u{n}'})}")
            await keys.settled()
        assert tenant.fetches == 3
        clock.now += FETCH_BACKOFF_SECONDS
        assert await validator.validate(f"Bearer {token({'oid': 'after'})}")
        await keys.settled()
    assert tenant.fetches == 4
    assert [r.getMessage() for r in caplog.records if r.name == "shared.auth"] == [
        "The tenant's signing keys could not be read again; the ones read before are kept"] * 2


async def test_what_a_read_behind_the_requests_raised_is_retrieved_and_logged_by_its_type(
        caplog: pytest.LogCaptureFixture) -> None:
    """A read in a task nobody awaits: what it raised past ``_refresh``'s own handling is taken from the task and
    logged (never asyncio's "Task exception was never retrieved"), and the next read may start after it."""

    class Interrupted(BaseException):
        pass

    class BrokenTenant(Tenant):
        broken = False

        async def fetch(self, url: str) -> Any:
            if self.broken:
                self.fetches += 1
                raise Interrupted
            return await super().fetch(url)

    tenant, clock = BrokenTenant(), Clock()
    validator, keys = _validator_and_keys(tenant, clock)
    await validator.validate(f"Bearer {token()}")
    tenant.broken = True
    clock.now += 24 * 3600
    with caplog.at_level("WARNING", logger="shared.auth"):
        assert await validator.validate(f"Bearer {token({'oid': 'u1'})}")
        await keys.settled()
        tenant.broken = False
        assert await validator.validate(f"Bearer {token({'oid': 'u2'})}")
        await keys.settled()
    assert tenant.fetches == 5  # the cold read, the broken read, a new read
    assert [r.getMessage() for r in caplog.records if r.name == "shared.auth"] == [
        "The tenant's signing keys could not be read again (Interrupted); the ones read before are kept"]


async def test_a_remembered_token_dropped_meanwhile_by_another_request_is_still_answered() -> None:
    """One request waits on a failing authority's key read (the keys past the day and the hour; the key it was
    checked with stays trusted); the same token, past its expiry meanwhile, is dropped by a second request. The
    first answers with what it checked (it raised KeyError on the entry gone), the second refuses the expired
    token."""
    gate = asyncio.Event()

    class HangingTenant(Tenant):
        down = False

        async def fetch(self, url: str) -> Any:
            if self.down:
                await gate.wait()
                raise OSError("the authority is down")
            return await super().fetch(url)

    tenant, monotonic, wall = HangingTenant(), Clock(), WallClock()
    settings = load_settings({**STORAGE, "AZURE_AUTHORITY_HOST": AUTHORITY, "AUTH_TENANT_ID": TENANT,
                              "AUTH_AUDIENCE": API})
    validator = TokenValidator(settings, SigningKeys(settings, tenant.fetch, monotonic=monotonic), now=wall)
    expires = int(wall.now) + 60
    raw = token({"exp": expires})
    await validator.validate(f"Bearer {raw}")
    tenant.down, monotonic.now = True, monotonic.now + KEYS_HARD_MAX_AGE_SECONDS
    first = asyncio.create_task(validator.validate(f"Bearer {raw}"))
    await asyncio.sleep(0.01)
    wall.now = expires + 3600
    second = asyncio.create_task(validator.validate(f"Bearer {raw}"))
    await asyncio.sleep(0.01)
    gate.set()
    answered, refused = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(answered, Principal), answered
    assert isinstance(refused, Unauthorized), refused


async def test_a_delegated_token_needs_the_api_s_delegated_permission() -> None:
    validator = _validator(Tenant())
    assert await validator.validate(f"Bearer {token({'scp': 'openid user_impersonation'})}")
    for scp in ("", "Files.Read", "user_impersonation_other"):  # consented for something else, or nothing
        with pytest.raises(Forbidden, match="user_impersonation") as refused:
            await validator.validate(f"Bearer {token({'scp': scp, 'oid': f'u-{scp}'})}")
        assert refused.value.status == 403
        assert 'error="insufficient_scope"' in refused.value.headers["WWW-Authenticate"]
        # who was refused, identified by a valid token: the refusal is audited with them (review H, L1)
        assert getattr(refused.value.principal, "id", None) == f"u-{scp}"
    daemon = token({"idtyp": "app", "oid": "daemon", "preferred_username": None})
    app_only = await validator.validate(f"Bearer {daemon}")
    assert app_only.type == "app"  # no scp: an application's own token, held to its app roles alone


# -- over real HTTP: the function app's token check against the stand-in's authority ---------------------------------
OVER_HTTP = 4


@dataclass
class Api:
    """The service's API registered on the stand-in, and a daemon's token for it (AppConnections.Reader)."""

    admin: Any
    token: str

    def options(self) -> Any:
        """A ``GET /api/v1/app-connections/options`` with the token, as the host hands it to the function."""
        import azure.functions as func

        return func.HttpRequest("GET", "https://svc.example/api/v1/app-connections/options",
                                headers={"authorization": f"Bearer {self.token}"}, params={}, route_params={},
                                body=b"")

    def discovery_reads(self) -> int:
        return len([r for r in self.admin.requests() if r["path"].endswith("openid-configuration")])


@pytest.fixture
async def api(standin: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    """A cold instance of the function app whose authority is the stand-in: no keys read yet, clients of its own."""
    from localdev.api_token import ApiAccess, daemon_token
    from shared import wiring
    from shared.azure import clients as clients_module
    from shared.settings import reset_settings

    admin = standin.admin
    tenant = admin.add_tenant()
    registered = admin.add_api(tenant, roles=["AppConnections.Reader"])
    daemon = admin.add_app(tenant, display_name="daemon")
    secret = admin.add_secret(tenant, daemon["appId"], display_name="d")
    admin.assign_role(tenant, registered["appId"], daemon["appId"], "AppConnections.Reader")
    access = ApiAccess(standin.url, str(standin.ca_path), tenant, registered["appId"], registered["identifierUri"],
                       daemon["appId"], secret["secretText"], daemon["servicePrincipalId"], "nobody@contoso.example",
                       "")
    bearer = daemon_token(access)
    for name, value in {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "AZURE_AUTHORITY_HOST": standin.url,
                        "AUTH_TENANT_ID": tenant, "AUTH_AUDIENCE": registered["appId"]}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    monkeypatch.setattr(wiring, "_VALIDATORS", type(wiring._VALIDATORS)())  # a cold start: no keys read yet
    monkeypatch.setattr(clients_module, "_BY_LOOP", type(clients_module._BY_LOOP)())
    admin.clear_requests()
    try:
        yield Api(admin, bearer)
    finally:
        admin.clear_faults()
        await wiring.token_validator()._keys.settled()
        await clients_module.close_clients()
        reset_settings()


def _options_function() -> Callable[[Any], Awaitable[Any]]:
    """The route's function as the app registers it (with the wrapper that checks the token)."""
    from shared.functions.connections import bp

    return next(b._function.get_user_function() for b in bp._function_builders
                if b._function.get_function_name() == "list_app_connection_options")


async def test_concurrent_cold_requests_read_the_signing_keys_once_over_http_when_entra_is_slow(api: Api) -> None:
    """The review's case: four requests at a cold start, Entra's discovery document 1.5 s slow; they read it four
    times, one after another (6 s)."""
    delay_ms = 1500
    api.admin.set_faults([{"path": "openid-configuration", "action": "delay", "delay_ms": delay_ms}])
    handler = _options_function()
    started = time.monotonic()
    answers = await asyncio.gather(*(handler(api.options()) for _ in range(OVER_HTTP)))
    took = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * OVER_HTTP
    assert api.discovery_reads() == 1, f"{api.discovery_reads()} discovery reads, {took:.1f} s"
    assert took < 2 * delay_ms / 1000, f"{took:.1f} s"


async def test_the_daily_read_of_the_keys_over_http_does_not_hold_a_request_whose_token_was_checked_already(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's case: once the keys were a day old (5 s here), a request with a token remembered a moment ago
    waited for another request's read of the keys (Entra 3 s slow here; with its 503s retried, the retry budget)."""
    from shared import auth
    from shared.wiring import token_validator

    handler = _options_function()
    assert (await handler(api.options())).status_code == 200  # the keys read, the token remembered
    monkeypatch.setattr(auth, "KEYS_MAX_AGE_SECONDS", 5.0)  # a day, scaled down ...
    monkeypatch.setattr(auth, "KEYS_HARD_MAX_AGE_SECONDS", 60.0)  # ... the day and the hour ...
    monkeypatch.setattr(auth, "REFETCH_INTERVAL_SECONDS", 4.0)  # ... and the minute between reads
    await asyncio.sleep(5.1)  # the keys are now "a day" old
    api.admin.set_faults([{"path": "openid-configuration", "action": "delay", "delay_ms": 3000}])
    first = asyncio.ensure_future(handler(api.options()))  # starts the daily read
    await asyncio.sleep(0.2)
    started = time.monotonic()
    answered = await handler(api.options())  # the same token, remembered, its key still published
    took = time.monotonic() - started
    assert answered.status_code == 200 and (await first).status_code == 200
    assert took < 1.0, f"a remembered token waited {took:.1f} s for another request's daily read of the keys"
    await token_validator()._keys.settled()
    assert api.discovery_reads() == 2  # the cold read and the daily one


async def test_closing_the_clients_ends_a_daily_read_of_the_keys_running_behind_the_requests(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review of the shutdown: ``close_clients`` (the host's shutdown) closed the clients while the daily
    read of the keys ran behind the requests, in a task held on ``SigningKeys``; the task went on, still pending
    after the shutdown, and read the key set over the clients just closed (a lean client opened on them that nothing
    closes), and the validator kept using those closed clients. Closing the clients ends that read (cancelled and
    awaited: no task is left pending) and forgets the validator built on them: the next request builds a new one,
    over the new clients."""
    from shared import auth
    from shared.azure import clients as clients_module
    from shared.azure.clients import ENTRA, get_clients
    from shared.wiring import token_validator

    handler = _options_function()
    assert (await handler(api.options())).status_code == 200  # the keys read, the token remembered
    validator, closed = token_validator(), get_clients()
    monkeypatch.setattr(auth, "KEYS_MAX_AGE_SECONDS", 2.0)  # a day, scaled down ...
    monkeypatch.setattr(auth, "KEYS_HARD_MAX_AGE_SECONDS", 60.0)  # ... the day and the hour ...
    monkeypatch.setattr(auth, "REFETCH_INTERVAL_SECONDS", 1.0)  # ... and the minute between reads
    await asyncio.sleep(2.1)  # the keys are now "a day" old
    api.admin.set_faults([{"path": "openid-configuration", "action": "delay", "delay_ms": 1000}])
    assert (await handler(api.options())).status_code == 200  # answered; the daily read starts behind it
    behind = validator._keys._behind
    assert behind is not None and not behind.done()

    await clients_module.close_clients()  # the host shuts down while the read runs

    assert behind.done(), "the read behind the requests is still pending after the clients were closed"
    await asyncio.sleep(1.5)  # the discovery document's answer, and what the read would do next
    assert ENTRA not in closed._rest, "a lean client was opened on the clients after they were closed"
    reads = [r["path"] for r in api.admin.requests()]
    assert not [path for path in reads if path.endswith("/keys")][1:], "the key set was read again after the close"
    assert token_validator() is not validator  # the next request's validator is built over the new clients
