"""OAuth building blocks: PKCE, the authorize URL, states, the token cache, and the checks made before any I/O."""

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import wiring
from shared.apps import APPS
from shared.azure.entra import jwt_claims
from shared.errors import InvalidRequest
from shared.oauth import OAuthFailed, OAuthFlow, authorize_url, code_challenge, new_verifier
from shared.oauth_tokens import OAuthNotConfigured, TokenCache, instance_client
from shared.options import app_options
from shared.ports import Adapters
from shared.settings import load_settings
from shared.store.oauth_states import new_state, state_keys

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "SITE_URL": "https://connections.example.com/"}
CONFIGURED = {
    **BASE,
    "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "not-a-real-secret",
}
KEY_VAULT = APPS["azure-key-vault"]


def test_the_rfc_7636_appendix_b_example_challenge():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_are_long_random_and_url_safe():
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9_-]+", verifier)
        challenge = code_challenge(verifier)
        digest = hashlib.sha256(verifier.encode()).digest()
        assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert "=" not in challenge


@pytest.mark.parametrize(("tenant", "segment"), [(None, "organizations"), ("aaaaaaaa-0000-0000-0000-000000000001",
                                                                           "aaaaaaaa-0000-0000-0000-000000000001")])
def test_the_authorize_url_carries_every_parameter(tenant, segment):
    settings = load_settings(CONFIGURED)
    url = authorize_url(settings, KEY_VAULT, "client-1", tenant, "state-1", "challenge-1")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"https://login.microsoftonline.us/{segment}/oauth2/v2.0/authorize"
    )
    query = {key: values[0] for key, values in parse_qs(parts.query, strict_parsing=True).items()}
    assert query == {
        "client_id": "client-1",
        "response_type": "code",
        "response_mode": "query",
        "redirect_uri": "https://connections.example.com/organization/app-connections/azure/oauth/callback",
        "scope": "openid offline_access https://vault.azure.net/.default",
        "state": "state-1",
        "code_challenge": "challenge-1",
        "code_challenge_method": "S256",
    }
    assert "+" not in parts.query  # spaces are %20


def test_the_graph_scope_follows_the_graph_endpoint_setting():
    settings = load_settings({**CONFIGURED, "GRAPH_ENDPOINT": "https://graph.microsoft.us"})
    url = authorize_url(settings, APPS["azure-client-secrets"], "c", None, "s", "x")
    assert parse_qs(urlsplit(url).query)["scope"] == ["openid offline_access https://graph.microsoft.us/.default"]


def test_an_unconfigured_app_names_the_two_settings_to_set():
    settings = load_settings(CONFIGURED)
    assert instance_client(settings, KEY_VAULT).client_id == "11111111-1111-1111-1111-111111111111"
    assert "not-a-real-secret" not in repr(instance_client(settings, KEY_VAULT))
    with pytest.raises(OAuthNotConfigured) as caught:
        instance_client(settings, APPS["azure-app-configuration"])
    problem = caught.value.to_problem()
    assert problem["status"] == 400
    assert problem["settings"] == [
        "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_ID",
        "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_SECRET",
    ]
    assert "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_SECRET" in problem["detail"]
    options = {o["app"]: o for o in app_options(settings)}
    assert options["azure-key-vault"]["oauthConfigured"] is True
    assert options["azure-app-configuration"]["oauthConfigured"] is False


class NoIO:
    """An adapter that must not be used: any call fails the test."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str):
        raise AssertionError(f"{self.name}.{attribute} was used")


def no_io_flow() -> OAuthFlow:
    """The OAuth flow over adapters that fail on any I/O (only the settings and the clock are real)."""
    adapters = Adapters(
        settings=load_settings(CONFIGURED), connections=NoIO("connections"), vault=NoIO("vault"),
        schedule=NoIO("schedule"), history=NoIO("history"), directory=NoIO("directory"), tokens=NoIO("tokens"),
        oauth_states=NoIO("oauth_states"), audit=NoIO("audit"), outbox=NoIO("outbox"),
        health_index=NoIO("health_index"), webhook=NoIO("webhook"), clock=lambda: datetime(2026, 3, 4, tzinfo=UTC),
        sleep=NoIO("sleep"),
    )
    return wiring.services(adapters).oauth


async def test_start_checks_configuration_and_fields_before_touching_storage():
    flow = no_io_flow()
    with pytest.raises(OAuthNotConfigured):
        await flow.start("azure-app-configuration", {"name": "x"})
    cases = [
        ({"name": "Not A Slug"}, "/name"),
        ({"name": "ok", "tenantId": "not-a-guid"}, "/tenantId"),
        ({"connectionId": "nope"}, "/connectionId"),
        ({"name": "ok", "surprise": "1"}, "/surprise"),
        ({"description": "no name"}, "/name"),
    ]
    for params, pointer in cases:
        with pytest.raises(InvalidRequest) as caught:
            await flow.start("azure-key-vault", {"code": "function-key", **params})
        assert pointer in [e.pointer for e in caught.value.errors], params


async def test_the_callback_refuses_malformed_answers_before_touching_storage():
    flow = no_io_flow()
    with pytest.raises(OAuthFailed, match="no state"):
        await flow.complete({"code": "abc"})
    with pytest.raises(OAuthFailed) as declined:  # no valid state: a fixed text, never the one it was given
        await flow.complete({"error": "access_denied", "error_description": "<b>no</b> call 555-0100"})
    assert declined.value.detail == "The sign-in did not complete. Start again from the App Connections page."
    with pytest.raises(OAuthFailed, match="'code'"):
        await flow.complete({"code": "x" * 9000, "state": "s"})
    with pytest.raises(OAuthFailed, match="'state'"):
        await flow.complete({"code": "x", "state": "a\x00b"})


def test_states_have_a_bucket_and_are_stored_by_hash():
    expires = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)
    value = new_state(expires)
    assert value.startswith("2026030405.")
    keys = state_keys(value)
    assert keys == ("2026030405", hashlib.sha256(value.encode()).hexdigest())
    assert value.split(".", 1)[1] not in "".join(keys)
    for bad in ("", "abc", "2026030405", "2026030405.short", "20260304.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "2026030405." + "a" * 40 + "'"):
        assert state_keys(bad) is None


def test_the_token_cache_serves_until_five_minutes_before_expiry_and_per_version():
    now = [1_000_000.0]
    cache = TokenCache(clock=lambda: now[0])
    key = ("azure-key-vault", "c1", "https://vault.azure.net/.default")
    cache.put(key, "v1", "token-1", int(now[0]) + 3600)
    assert cache.get(key, "v1") == ("token-1", int(now[0]) + 3600)
    assert cache.get(key, "v2") is None  # re-authorized since: a token of the old grant is not served
    assert cache.get(("azure-key-vault", "c1", "other/.default"), "v1") is None
    now[0] += 3600 - 301
    assert cache.get(key, "v1") is not None
    now[0] += 2
    assert cache.get(key, "v1") is None
    cache.put(key, "v1", "token-2", int(now[0]) + 3600)
    assert "token-2" not in repr(cache._entries)
    cache.clear()
    assert cache.get(key, "v1") is None


def test_jwt_claims_are_read_without_trusting_anything_else():
    payload = base64.urlsafe_b64encode(json.dumps({"tid": "T", "oid": "O"}).encode()).decode().rstrip("=")
    assert jwt_claims(f"h.{payload}.s") == {"tid": "T", "oid": "O"}
    assert jwt_claims("opaque") == {}
    assert jwt_claims(None) == {}
    assert jwt_claims("a.!!!.c") == {}
    assert jwt_claims("a." + base64.urlsafe_b64encode(b"[1]").decode() + ".c") == {}
