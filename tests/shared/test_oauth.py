"""OAuth building blocks: the instance client, states, the token cache, and the checks made before any I/O (PKCE
and the authorize URL: test_oauth_start.py)."""

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import wiring
from shared.apps import APPS
from shared.azure.entra import jwt_claims
from shared.errors import InvalidRequest
from shared.oauth import OAuthFailed, OAuthFlow
from shared.oauth_tokens import OAuthNotConfigured, ReauthorizationRequired, TokenCache, instance_client
from shared.options import app_options
from shared.ports import Adapters
from shared.records import ConnectionRecord
from shared.settings import load_settings
from shared.store.oauth_states import new_state, state_keys

KV = APPS["azure-key-vault"]

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "SITE_URL": "https://connections.example.com/"}
CONFIGURED = {
    **BASE,
    "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "not-a-real-secret",
}
KEY_VAULT = APPS["azure-key-vault"]


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


# -- who authorized a connection ----------------------------------------------------------------------------------
def _access_token(claims: dict[str, str]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def _answers(fakes, id_claims: dict[str, str], access_claims: dict[str, str] | None = None) -> None:  # type: ignore[no-untyped-def]
    """The fake token endpoint answers a sign-in with these ID token claims (and an access token of these)."""
    from shared.ports import TokenResult

    redeem = fakes.tokens.redeem

    async def answered(tenant, form):  # type: ignore[no-untyped-def]
        result = await redeem(tenant, form)
        access = _access_token(access_claims) if access_claims is not None else result.access_token
        return TokenResult(access, result.refresh_token, result.expires_on, dict(id_claims))

    fakes.tokens.redeem = answered


async def _signed_in(fakes, params: dict[str, str]):  # type: ignore[no-untyped-def]
    import urllib.parse

    from shared.audit import RequestContext, acting
    from shared.records import Actor

    flow = wiring.services(fakes.adapters).oauth
    with acting(RequestContext(Actor("writer-1", "writer@contoso.example", "user", "AppConnections.Writer"))):
        url = await flow.start("azure-key-vault", params)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert "profile" in query["scope"][0].split()  # so that Entra's ID token names who signed in (oid)
    return await flow.complete({"code": "a-code", "state": query["state"][0]})


async def test_a_sign_in_that_names_nobody_cannot_replace_another_person_s_authorization_unless_allowed():
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "oid": "alice-oid", "preferred_username": "alice@contoso.example"})
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    assert (created.authorized_by.oid, created.authorized_by.upn) == ("alice-oid", "alice@contoso.example")
    _answers(fakes, {"tid": TENANT, "sub": "pairwise"}, access_claims={"tid": TENANT})  # neither token says who
    with pytest.raises(OAuthFailed, match="did not say who signed in"):
        await _signed_in(fakes, {"connectionId": created.id})
    kept = await fakes.connections.get("azure-key-vault", created.id)
    assert (kept.authorized_by, kept.secret_version) == (created.authorized_by, created.secret_version)
    allowed = await _signed_in(fakes, {"connectionId": created.id, "allowDifferentUser": "true"})
    assert allowed.record.authorized_by is None  # the new grant is nobody known, not still Alice's


async def test_a_connection_nobody_is_recorded_to_have_authorized_is_re_authorized_only_when_allowed():
    """(Review F, session 17.) A connection whose authorizer is not recorded (an older one, or signed in by a
    token that named nobody) took any signer's grant without allowDifferentUser, though a signer that is not
    named is refused: neither can be shown to be the same person."""
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "sub": "pairwise"}, access_claims={"tid": TENANT})  # names nobody
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    assert created.authorized_by is None
    _answers(fakes, {"tid": TENANT, "oid": "mallory-oid", "preferred_username": "mallory@contoso.example"})
    with pytest.raises(OAuthFailed, match="Nobody is recorded as having authorized"):
        await _signed_in(fakes, {"connectionId": created.id})
    kept = await fakes.connections.get("azure-key-vault", created.id)
    assert (kept.authorized_by, kept.secret_version) == (None, created.secret_version)
    allowed = await _signed_in(fakes, {"connectionId": created.id, "allowDifferentUser": "true"})
    assert allowed.record.authorized_by.oid == "mallory-oid"


async def test_a_sign_in_for_whoever_holds_its_link_asks_for_the_account_and_a_change_of_signer_is_audited():
    """(Review F.) A sign-in started with a bearer token is not bound to a browser: whoever opens its link signs in.
    Entra is asked to show its account picker (no single click with the account a browser happens to hold), and a
    re-authorization's record says whose authorization, and which tenant, it replaces."""
    import urllib.parse

    from shared.audit import RequestContext, acting
    from shared.records import Actor
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    flow = wiring.services(fakes.adapters).oauth
    with acting(RequestContext(Actor("writer-1", "writer@contoso.example", "user", "AppConnections.Writer"))):
        unbound = await flow.start("azure-key-vault", {"name": "kv", "tenantId": TENANT})
        bound = await flow.start("azure-key-vault", {"name": "kv2", "tenantId": TENANT}, "browser-secret")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(unbound).query)["prompt"] == ["select_account"]
    assert "prompt" not in urllib.parse.parse_qs(urllib.parse.urlsplit(bound).query)
    _answers(fakes, {"tid": TENANT, "oid": "alice-oid", "preferred_username": "alice@contoso.example"})
    created = (await _signed_in(fakes, {"name": "kv3", "tenantId": TENANT})).record
    _answers(fakes, {"tid": TENANT, "oid": "bob-oid", "preferred_username": "bob@contoso.example"})
    await _signed_in(fakes, {"connectionId": created.id, "allowDifferentUser": "true"})
    [(_, _, detail)] = [o for o in _outcomes(fakes, "connection.reauthorize") if o[0] == "succeeded"]
    assert detail == ("OAuth sign-in by bob@contoso.example (allowDifferentUser); replaces the authorization of "
                      "alice@contoso.example")


async def _from_the_console_over_an_unrecorded_authorizer(starter_oid: str, starter_name: str,
                                                          signer: dict[str, str]):  # type: ignore[no-untyped-def]
    """A connection nobody is recorded to have authorized, re-authorized from the console (the sign-in bound to the
    browser that started it) by ``starter``, whose sign-in Entra answers as ``signer``: the callback's outcome."""
    import urllib.parse

    from shared.audit import RequestContext, acting
    from shared.oauth_start import BINDING_COOKIE_PREFIX
    from shared.records import Actor
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "sub": "pairwise"}, access_claims={"tid": TENANT})  # names nobody
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    _answers(fakes, {"tid": TENANT, **signer})
    flow = wiring.services(fakes.adapters).oauth
    with acting(RequestContext(Actor(starter_oid, starter_name, "user", "AppConnections.Writer"))):
        url = await flow.start("azure-key-vault", {"connectionId": created.id}, "browser-secret")
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["state"][0]
    return await flow.complete({"code": "a-code", "state": state}, {BINDING_COOKIE_PREFIX + "x": "browser-secret"})


async def test_a_re_authorization_from_the_browser_that_started_it_takes_an_unrecorded_authorizer_s_place():
    """(Review H.) From the console (bound to the browser that started it), the person who asked to re-authorize a
    connection nobody is recorded to have authorized is the one who signs in: the console cannot send
    allowDifferentUser, and such a connection could otherwise never be re-authorized there."""
    done = await _from_the_console_over_an_unrecorded_authorizer(
        "ada-oid", "ada@contoso.example", {"oid": "ada-oid", "preferred_username": "ada@contoso.example"})
    assert done.record.authorized_by.oid == "ada-oid"


async def test_a_re_authorization_written_again_after_a_concurrent_change_says_what_it_replaced_once():
    from shared.errors import ConcurrentChange
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "oid": "alice-oid", "preferred_username": "alice@contoso.example"})
    created = (await _signed_in(fakes, {"name": "kv3", "tenantId": TENANT})).record
    _answers(fakes, {"tid": TENANT, "oid": "bob-oid", "preferred_username": "bob@contoso.example"})
    fakes.world.fail_next("store.update", ConcurrentChange("raced"))
    await _signed_in(fakes, {"connectionId": created.id, "allowDifferentUser": "true"})
    [detail] = [o[2] for o in _outcomes(fakes, "connection.reauthorize") if o[0] == "succeeded"]
    assert detail.count("replaces") == 1, detail


async def test_who_signed_in_is_taken_from_the_access_token_when_the_id_token_does_not_say():
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT}, access_claims={"tid": TENANT, "oid": "bob-oid", "upn": "bob@contoso.example"})
    created = (await _signed_in(fakes, {"name": "kv2", "tenantId": TENANT})).record
    assert (created.authorized_by.oid, created.authorized_by.upn) == ("bob-oid", "bob@contoso.example")


def _outcomes(fakes, action: str) -> list[tuple[str, str, str | None]]:  # type: ignore[no-untyped-def]
    return [(r.outcome, r.actor.id, r.detail) for r in fakes.audit.records if r.action == action]


async def test_a_used_up_sign_in_that_entra_declined_is_audited_as_failed_by_the_person_who_started_it():
    import urllib.parse

    from shared.audit import RequestContext, acting
    from shared.records import Actor
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    flow = wiring.services(fakes.adapters).oauth
    with acting(RequestContext(Actor("writer-1", "writer@contoso.example", "user", "AppConnections.Writer"))):
        url = await flow.start("azure-key-vault", {"name": "kv", "tenantId": TENANT})
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["state"][0]
    with pytest.raises(OAuthFailed, match="access_denied, AADSTS65004"):
        await flow.complete({"state": state, "error": "access_denied",
                             "error_description": "AADSTS65004: User declined to consent. <script>x</script>"})
    [(outcome, actor, detail)] = _outcomes(fakes, "connection.create")
    assert (outcome, actor) == ("failed", "writer-1")
    assert detail == "OAuth sign-in not completed: Entra ID did not grant access (access_denied, AADSTS65004)."


async def test_a_sign_in_whose_save_fails_after_it_was_audited_as_started_is_audited_as_failed():
    import urllib.parse

    from shared.audit import RequestContext, acting
    from shared.records import Actor
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "oid": "alice-oid", "preferred_username": "alice@contoso.example"})
    flow = wiring.services(fakes.adapters).oauth
    with acting(RequestContext(Actor("writer-1", "writer@contoso.example", "user", "AppConnections.Writer"))):
        url = await flow.start("azure-key-vault", {"name": "kv", "tenantId": TENANT})
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["state"][0]
    await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})  # the name is taken while the person signs in
    fakes.audit.records.clear()
    with pytest.raises(OAuthFailed, match="already exists"):
        await flow.complete({"code": "a-code", "state": state})
    assert [(o, a) for o, a, _ in _outcomes(fakes, "connection.create")] == [("started", "writer-1"),
                                                                           ("failed", "writer-1")]


async def test_a_refused_re_authorization_is_audited_once_as_refused():
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "oid": "alice-oid", "preferred_username": "alice@contoso.example"})
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    _answers(fakes, {"tid": TENANT, "oid": "bob-oid", "preferred_username": "bob@contoso.example"})
    with pytest.raises(OAuthFailed, match=r"authorized by alice@contoso\.example"):
        await _signed_in(fakes, {"connectionId": created.id})
    assert _outcomes(fakes, "connection.reauthorize") == [
        ("started", "writer-1", "OAuth sign-in by bob@contoso.example"),
        ("refused", "writer-1", "OAuth sign-in by bob@contoso.example: another person than the one who consented")]


async def test_a_sign_in_started_in_a_browser_is_completed_only_by_that_browser():
    """RFC 9700 §4.7.1: a sign-in started from the console carries a cookie; its URL opened in another browser
    (sent to someone else, say) would bind their grant to a connection the starter chose. Refused, audited."""
    import urllib.parse

    from shared.audit import RequestContext, acting
    from shared.oauth_start import new_browser_binding
    from shared.records import Actor
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    _answers(fakes, {"tid": TENANT, "oid": "alice-oid", "preferred_username": "alice@contoso.example"})
    flow = wiring.services(fakes.adapters).oauth

    async def started(name: str) -> tuple[str, str, str]:
        cookie, value = new_browser_binding()
        with acting(RequestContext(Actor("writer-1", "writer@contoso.example", "user", "AppConnections.Writer"))):
            url = await flow.start("azure-key-vault", {"name": name, "tenantId": TENANT}, value)
        return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["state"][0], cookie, value

    for cookies in ({}, {"__Host-appconn-oauth-000000000000": "a-guess"}, {"other": "x"}):
        state, cookie, value = await started("kv")
        with pytest.raises(OAuthFailed, match="started in another browser"):
            await flow.complete({"code": "a-code", "state": state}, cookies)
    assert [o for o, _, _ in _outcomes(fakes, "connection.create")] == ["failed"] * 3
    state, cookie, value = await started("kv")  # the browser that started it: two sign-ins' cookies, one its own
    _, other_cookie, other_value = await started("kv2")
    outcome = await flow.complete({"code": "a-code", "state": state}, {other_cookie: other_value, cookie: value})
    assert outcome.record.name == "kv"
    unbound = await _signed_in(fakes, {"name": "kv3", "tenantId": TENANT})  # started with a bearer token: unbound
    assert unbound.record.name == "kv3"


async def test_a_refresh_overtaken_by_a_re_authorization_does_not_serve_the_old_grant_s_token_for_the_new_one():
    """Found by a review: a refresh that redeemed Alice's refresh token while a re-authorization as Bob made his
    grant current cached Alice's access token under Bob's version (its save of the rotated token rightly lost, and
    returned Bob's record); it was served for Bob's grant for up to an hour. Re-authorizing as someone else is how
    an administrator cuts a person's delegated access off."""
    from shared.connections import ConnectionService
    from shared.ports import TokenResult
    from shared.rotation.protocol import Rotator
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    who = {"oid": "alice-oid", "preferred_username": "alice@contoso.example"}
    redeem = fakes.tokens.redeem
    overtake: list[str] = []

    async def answered(tenant, form):  # type: ignore[no-untyped-def]
        if form["grant_type"] == "refresh_token" and overtake:  # Bob signs in while Alice's token is redeemed
            connection_id = overtake.pop()
            who.update(oid="bob-oid", preferred_username="bob@contoso.example")
            await _signed_in(fakes, {"connectionId": connection_id, "allowDifferentUser": "true"})
            result = await redeem(tenant, form)
            return TokenResult("token-of-alice", result.refresh_token, result.expires_on, {"tid": TENANT})
        result = await redeem(tenant, form)
        return TokenResult(f"token-of-{who['oid']}", result.refresh_token, result.expires_on, {"tid": TENANT, **who})

    fakes.tokens.redeem = answered
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    other_instance = ConnectionService(fakes.adapters, Rotator(fakes.adapters), token_cache=TokenCache())
    overtake.append(created.id)
    await other_instance.oauth_tokens.access_token(KV, created)
    now = await fakes.connections.get("azure-key-vault", created.id)
    assert now.authorized_by is not None and now.authorized_by.oid == "bob-oid"
    _, token = await other_instance.oauth_tokens.access_token(KV, now)
    assert token.token == "token-of-bob-oid"


async def test_from_the_console_an_unrecorded_authorizer_s_place_is_taken_only_by_the_person_who_asked():
    """(Review M.) From the browser that started it, any account that browser was signed in to took the place of
    an unrecorded authorizer: it must be the person who asked to re-authorize (else allowDifferentUser)."""
    with pytest.raises(OAuthFailed, match="Nobody is recorded"):
        await _from_the_console_over_an_unrecorded_authorizer(
            "ada-oid", "ada@contoso.example", {"oid": "mallory-oid", "preferred_username": "mallory@contoso.example"})


async def test_from_the_console_a_guest_of_another_tenant_is_the_person_who_asked_by_user_name():
    """(Review N.) Signed in to the connection's tenant as a guest there, the person who asked in the console has
    another object id: they are known by their user name."""
    done = await _from_the_console_over_an_unrecorded_authorizer(
        "ada-home-oid", "ada@home.example", {"oid": "ada-guest-oid", "preferred_username": "Ada@Home.example"})
    assert done.record.authorized_by.oid == "ada-guest-oid"



async def _refreshed_while_used_elsewhere(stored_during: int | None):  # type: ignore[no-untyped-def]
    """A refresh here whose refresh token another instance redeemed a moment before (the lock covers one event
    loop), that instance storing the token it rotated to during this one's wait number ``stored_during`` (never
    when None): the outcome, and the waits made."""
    import dataclasses

    from shared.connections import ConnectionService
    from shared.rotation.protocol import Rotator
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    elsewhere = ConnectionService(fakes.adapters, Rotator(fakes.adapters), token_cache=TokenCache())
    redeem = fakes.tokens.redeem
    rotated: list[str] = []
    waited: list[float] = []

    async def used_elsewhere_first(tenant, form):  # type: ignore[no-untyped-def]
        if form["grant_type"] == "refresh_token" and not rotated:
            rotated.append((await redeem(tenant, form)).refresh_token or "")
        return await redeem(tenant, form)

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) == stored_during:
            await elsewhere.store_refresh_token(await fakes.connections.get(created.app, created.id), rotated[0])

    fakes.tokens.redeem = used_elsewhere_first
    here = ConnectionService(dataclasses.replace(fakes.adapters, sleep=sleep), Rotator(fakes.adapters),
                             token_cache=TokenCache())
    try:
        outcome: Any = await here.oauth_tokens.refresh_now(KV, created)
    except ReauthorizationRequired as refused:
        outcome = refused
    return created, outcome, waited


@pytest.mark.parametrize("stored_during", [1, 3])
async def test_a_refresh_token_another_instance_just_used_is_not_taken_as_revoked(stored_during: int):
    """Found by a review of two instances at once: another instance redeemed the refresh token a moment before this
    one (Entra rotates it on use) and had not stored its successor yet when this one, refused (``invalid_grant``),
    read the connection again: ``validate`` answered 400 reauthorization-required, and a health check alerted a
    person about a working connection. The record is read again for a few seconds, and the token stored meanwhile
    redeemed."""
    from shared.oauth_tokens import ELSEWHERE_WAITS

    created, refreshed, waited = await _refreshed_while_used_elsewhere(stored_during)
    assert isinstance(refreshed, ConnectionRecord), refreshed
    assert refreshed.secret_version not in (created.secret_version, None)
    assert waited == list(ELSEWHERE_WAITS[:stored_during])


async def test_a_refresh_token_refused_with_no_successor_stored_meanwhile_needs_a_new_sign_in():
    """What a refresh elsewhere never stores (its instance died, or the token was really revoked) is final once the
    waits for it are over: a few seconds."""
    from shared.oauth_tokens import ELSEWHERE_WAITS

    created, refused, waited = await _refreshed_while_used_elsewhere(None)
    assert isinstance(refused, ReauthorizationRequired) and refused.status == 400
    assert refused.record is not None and refused.record.secret_version == created.secret_version
    assert waited == list(ELSEWHERE_WAITS) and sum(waited) < 5


async def test_a_refresh_disables_the_version_it_replaced_without_listing_the_secret_s_versions():
    """Found by a review of resource bounds: each refresh that stored the refresh token Entra rotated to then
    disabled the superseded versions by listing every version the secret ever had (Key Vault keeps them all, 25 a
    page), so a refresh cost more the older the connection: 300 validates listed 45,450 versions, the last one 301.
    A refresh disables the version it replaced, which it knows: the listings stay as many as there were."""
    from shared.audit import RequestContext, acting
    from shared.records import Actor
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    service = wiring.services(fakes.adapters).connections
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    listings = fakes.vault.listings
    with acting(RequestContext(Actor("writer-1", "writer@contoso.example", "user", "AppConnections.Writer"))):
        for _ in range(100):
            await service.validate("azure-key-vault", created.id)
    current = await fakes.connections.get("azure-key-vault", created.id)
    versions = fakes.vault.secrets[created.secret_name]
    assert len(versions) == 101 and [v.version for v in versions if v.enabled] == [current.secret_version]
    assert fakes.vault.listings == listings


async def test_a_version_a_refresh_failed_to_disable_is_disabled_by_the_next_re_authorization() -> None:
    """A refresh lists no versions, so what its failed disable left enabled stays so through later refreshes; a
    re-authorization (a person's change, as new credentials are) disables every version written before its own."""
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    service = wiring.services(fakes.adapters).connections
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    fakes.vault.refused_disables = 1  # throttled once: the adapter's disable is best effort
    for _ in range(3):
        record = await service.oauth_tokens.refresh_now(KV, await fakes.connections.get(KV.id, created.id))
    versions = fakes.vault.secrets[created.secret_name]
    assert [v.version for v in versions if v.enabled] == [created.secret_version, record.secret_version]
    listings = fakes.vault.listings
    again = (await _signed_in(fakes, {"connectionId": created.id})).record
    assert [v.version for v in versions if v.enabled] == [again.secret_version]
    assert fakes.vault.listings == listings + 1


async def test_a_refresh_lock_is_dropped_once_nobody_holds_or_waits_on_it():
    """Found by a review of resource bounds: one lock per (app, connection, scope) ever refreshed was kept for the
    worker's life, deleted connections' too. A lock is dropped when its last holder or waiter leaves; while one
    refresh holds it, another of the same connection waits on the same lock."""
    import asyncio

    from shared import oauth_tokens
    from tests.fakes import TENANT, build_fakes

    fakes = build_fakes()
    service = wiring.services(fakes.adapters).connections
    loop = asyncio.get_running_loop()
    locks = oauth_tokens._LOCKS.setdefault(loop, {})
    before = set(locks)
    created = (await _signed_in(fakes, {"name": "kv", "tenantId": TENANT})).record
    for _ in range(3):
        await service.oauth_tokens.refresh_now(KV, await fakes.connections.get(KV.id, created.id))
    assert set(locks) == before

    redeem = fakes.tokens.redeem
    inside = 0
    most = 0

    async def slow(tenant, form):  # type: ignore[no-untyped-def]
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        return await redeem(tenant, form)

    fakes.tokens.redeem = slow
    await asyncio.gather(*(service.oauth_tokens.refresh_now(KV, created) for _ in range(3)))
    assert most == 1  # one refresh at a time: each waited on the lock the first one held
    assert set(locks) == before
