"""Access tokens are checked in the service: signature by the tenant's published keys, issuer, audience, times,
RS256 only; roles come from the ``roles`` claim, optionally limited to one app."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import jws
from shared.auth import Principal, SigningKeys, TokenValidator, authorize
from shared.errors import Forbidden, ServiceMisconfigured, Unauthorized
from shared.settings import load_settings

TENANT = "11111111-1111-1111-1111-111111111111"
API = "22222222-2222-2222-2222-222222222222"
AUTHORITY = "https://login.example"
ISSUER = f"{AUTHORITY}/{TENANT}/v2.0"
STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


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
    settings = load_settings({**STORAGE, "AZURE_AUTHORITY_HOST": AUTHORITY, "AUTH_TENANT_ID": TENANT,
                              "AUTH_AUDIENCE": API, **env})
    return TokenValidator(settings, SigningKeys(settings, tenant.fetch, monotonic=clock or Clock()))


def token(claims: dict[str, Any] | None = None, key: rsa.RSAPrivateKey = KEY, kid: str = "k1",
          alg: str = "RS256") -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": API, "tid": TENANT, "oid": "u1", "sub": "u1", "name": "Ada",
            "preferred_username": "ada@contoso.example", "roles": ["AppConnections.Reader"], "iat": now,
            "nbf": now, "exp": now + 3600, **(claims or {})}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def test_a_valid_token_of_a_person_names_them_and_their_roles() -> None:
    principal = await _validator(Tenant()).validate(f"Bearer {token()}")
    assert principal == Principal("u1", "ada@contoso.example", "user", TENANT,
                                  frozenset({"AppConnections.Reader"}))


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
    import hashlib
    import hmac

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


async def test_without_the_auth_settings_there_is_no_open_mode() -> None:
    settings = load_settings(STORAGE)
    validator = TokenValidator(settings, SigningKeys(settings, Tenant().fetch))
    with pytest.raises(ServiceMisconfigured) as refused:
        await validator.validate(f"Bearer {token()}")
    assert refused.value.status == 503
    assert "AUTH_TENANT_ID" in refused.value.detail


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
