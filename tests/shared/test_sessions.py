"""The console's sign-in and sessions (``shared.sessions``) against in-memory fakes: the cookie holds only an opaque
id, the store only its hash; sessions end at their absolute or idle expiry and at sign-out; changes by cookie need
this service's Origin and the session's CSRF token; the return path stays on this origin; the sign-in is bound to
the browser that started it, to its PKCE verifier and nonce, and authenticates the client by secret or assertion."""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from shared.auth import Principal, authorize
from shared.errors import (
    Forbidden,
    InvalidRequest,
    RequestForgery,
    ServiceMisconfigured,
    SignInRequired,
    Unauthorized,
)
from shared.ports import TokenResult
from shared.sessions import (
    DEFAULT_RETURN_TO,
    LOGIN_COOKIE_PREFIX,
    MAX_PENDING_LOGINS,
    SESSION_COOKIE,
    Sessions,
    SignIn,
    clear_cookie,
    cookie_value,
    id_keys,
    login_cookie,
    origin_of,
    safe_return_to,
    set_cookie,
    stale_login_cookies,
)
from shared.settings import load_settings
from tests.fakes import Clock, FakeSessions
from tests.shared.test_auth import API, AUTHORITY, STORAGE, TENANT, Tenant, token

SITE = "https://connections.contoso.example"
ENV = {**STORAGE, "AZURE_AUTHORITY_HOST": AUTHORITY, "AUTH_TENANT_ID": TENANT, "AUTH_AUDIENCE": API,
       "SITE_URL": SITE, "CONSOLE_CLIENT_SECRET": "console-secret"}
READER = Principal("u1", "ada@contoso.example", "user", TENANT, frozenset({"AppConnections.Reader"}))


def sessions(clock: Clock, store: FakeSessions | None = None, **env: str) -> Sessions:
    return Sessions(store or FakeSessions(), clock, load_settings({**ENV, **env}))


# -- the cookie ---------------------------------------------------------------------------------------------------
def test_the_session_cookie_is_a_host_cookie_for_scripts_nobody_can_read() -> None:
    line = set_cookie(SESSION_COOKIE, "2026010520.abc", 28800)
    name, *attributes = [part.strip() for part in line.split(";")]
    assert name == "__Host-appconn=2026010520.abc"
    assert set(attributes) == {"Max-Age=28800", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"}  # no Domain
    cleared = clear_cookie(SESSION_COOKIE)
    assert cleared.startswith("__Host-appconn=;") and "Max-Age=0" in cleared and "Path=/" in cleared


def test_a_forged_state_with_a_lone_surrogate_names_a_cookie_too() -> None:
    """(Fuzzing review.) The console's callback names the cookie of the state it is given before it checks it: a
    lone surrogate raised there (a 500 and a stack trace), not the sign-in's usual refusal (a 400 page)."""
    assert re.fullmatch(r"__Host-appconn-login-[0-9a-f]{12}", login_cookie("\ud800"))


def test_each_sign_in_has_a_cookie_of_its_own_named_for_its_state() -> None:
    names = {login_cookie(state) for state in ("a", "b", "a")}
    assert len(names) == 2 and all(name.startswith(LOGIN_COOKIE_PREFIX) for name in names)
    assert all(re.fullmatch(r"__Host-appconn-login-[0-9a-f]{12}", name) for name in names)


def test_sign_ins_left_unfinished_are_cleared_by_a_new_one_once_they_pile_up() -> None:
    """Each sign-in adds a cookie for ten minutes: a loop of unfinished ones would overflow the request's headers
    or push the session cookie out of the jar (review V). A few (tabs) are kept; past that, all are cleared."""
    def header(count: int) -> str:
        return "; ".join([f"{SESSION_COOKIE}=s", *(f"{login_cookie(str(n))}={n}" for n in range(count))])

    assert stale_login_cookies(header(MAX_PENDING_LOGINS - 1)) == []
    cleared = stale_login_cookies(header(MAX_PENDING_LOGINS))
    assert sorted(cleared) == sorted(login_cookie(str(n)) for n in range(MAX_PENDING_LOGINS))
    assert SESSION_COOKIE not in cleared and stale_login_cookies(None) == []


def test_the_cookie_is_read_by_its_exact_name() -> None:
    header = f"{login_cookie('state')}=state; other=1; __Host-appconn=the-id; __Host-appconn=later"
    assert cookie_value(header, SESSION_COOKIE) == "the-id"
    assert cookie_value(header, login_cookie("state")) == "state"
    assert cookie_value(header, login_cookie("another")) is None
    assert cookie_value("appconn=x; __host-appconn=y", SESSION_COOKIE) is None
    assert cookie_value(None, SESSION_COOKIE) is None


def test_only_ids_shaped_like_ours_name_a_session() -> None:
    assert id_keys("2026010520." + "a" * 43) is not None
    for bad in ("", "x", "2026010520." + "a" * 42, "2026010520." + "a" * 44, "202601052." + "a" * 43,
                "2026010520." + "a" * 42 + "!"):
        assert id_keys(bad) is None


# -- where the browser goes back to --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["/organization/app-connections", "/organization/app-connections/azure-key-vault/1",
                                   "/organization/app-connections?app=azure-key-vault"])
def test_a_path_of_this_origin_is_kept(value: str) -> None:
    assert safe_return_to(value) == value


@pytest.mark.parametrize("value", [None, "", "//evil.example/x", "/\\evil.example", "https://evil.example/",
                                   "javascript:alert(1)", "organization", "/auth/login", "/auth/callback?x",
                                   "/a b", "/\u00e9", "/" + "a" * 2048, "/x\r\nSet-Cookie: a=b"])
def test_anything_else_goes_to_the_console(value: str | None) -> None:
    assert safe_return_to(value) == DEFAULT_RETURN_TO


def test_the_services_origin_is_that_of_site_url() -> None:
    assert origin_of("https://Connections.Contoso.example:443/base/") == "https://connections.contoso.example"
    assert origin_of("http://localhost:7071") == "http://localhost:7071"
    assert origin_of("http://127.0.0.1:80") == "http://127.0.0.1"


# -- sessions ------------------------------------------------------------------------------------------------------
async def test_a_session_is_stored_by_the_hash_of_its_id_never_the_id() -> None:
    store = FakeSessions()
    session_id, session = await sessions(Clock(), store).start(READER, "Ada Lovelace")

    bucket, key = id_keys(session_id) or ("", "")
    assert key == hashlib.sha256(session_id.encode()).hexdigest()
    assert list(store.sessions) == [(bucket, key)]
    assert session_id not in repr(store.sessions) and session_id not in repr(session)
    assert session.roles == READER.roles and session.display_name == "Ada Lovelace"
    assert session.expires_at - session.created_at == timedelta(hours=8)


async def test_a_session_in_use_lives_until_its_absolute_expiry() -> None:
    clock = Clock()
    service = sessions(clock)
    session_id, _ = await service.start(READER)
    for _ in range(16 * 2 - 1):  # used every 15 minutes for 7 h 45 min
        clock.advance(timedelta(minutes=15))
        await service.resume(session_id)
    clock.advance(timedelta(minutes=15))  # 8 h after sign-in
    with pytest.raises(SignInRequired) as ended:
        await service.resume(session_id)
    assert ended.value.extensions["loginUrl"] == "/auth/login"
    assert ended.value.headers["Set-Cookie"].startswith("__Host-appconn=;")


async def test_the_description_says_when_the_absolute_expiry_ends_the_session() -> None:
    """The page warns before the session ends; a use extends the idle expiry, never the absolute one, so its warning
    says which (``absoluteExpiresIn`` no more than ``expiresIn``: staying signed in is not possible)."""
    clock = Clock()
    service = sessions(clock)
    session_id, _ = await service.start(READER)
    described = service.describe(await service.resume(session_id, use=False))
    assert (described["expiresIn"], described["absoluteExpiresIn"]) == (30 * 60, 8 * 3600)
    for _ in range(31):  # used every 15 minutes: 7 h 45 min after sign-in
        clock.advance(timedelta(minutes=15))
        await service.resume(session_id)
    clock.advance(timedelta(seconds=30))
    described = service.describe(await service.resume(session_id, use=False))
    assert described["expiresIn"] == described["absoluteExpiresIn"] == 14 * 60 + 30  # the absolute expiry ends it


async def test_an_idle_session_ends_and_is_deleted() -> None:
    clock, store = Clock(), FakeSessions()
    service = sessions(clock, store)
    session_id, _ = await service.start(READER)
    clock.advance(timedelta(minutes=29, seconds=59))
    await service.resume(session_id)  # still alive, and its last use noted
    clock.advance(timedelta(minutes=29, seconds=59))
    await service.resume(session_id)
    clock.advance(timedelta(minutes=30))
    with pytest.raises(SignInRequired):
        await service.resume(session_id)
    assert store.sessions == {}


async def test_the_settings_set_both_expiries() -> None:
    clock = Clock()
    service = sessions(clock, CONSOLE_SESSION_ABSOLUTE_HOURS="1", CONSOLE_SESSION_IDLE_MINUTES="5")
    session_id, _ = await service.start(READER)
    clock.advance(timedelta(minutes=5))
    with pytest.raises(SignInRequired):
        await service.resume(session_id)


async def test_the_last_use_is_written_at_most_once_a_minute() -> None:
    clock, store = Clock(), FakeSessions()
    service = sessions(clock, store)
    session_id, _ = await service.start(READER)
    for _ in range(5):
        clock.advance(timedelta(seconds=10))
        await service.resume(session_id)
    assert store.touches == 0
    clock.advance(timedelta(seconds=10))
    described = service.describe(await service.resume(session_id))
    assert store.touches == 1
    assert described["expiresAt"] == (clock.now + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert described["expiresIn"] == 30 * 60  # by the service's clock: the page's may be off
    clock.advance(timedelta(minutes=29, seconds=59, milliseconds=500))
    assert service.describe(await service.resume(session_id, use=False))["expiresIn"] == 1  # rounded up


async def test_staying_signed_in_notes_the_use_at_once_once_the_origin_and_the_csrf_token_are_checked() -> None:
    """``POST /auth/session`` (the console's Stay signed in): the person asked, so the idle expiry moves even within
    a minute of the last use; a forgery (no Origin of this service, not the session's token) is refused naming the
    person (it is recorded) and writes nothing."""
    clock, store = Clock(), FakeSessions()
    service = sessions(clock, store)
    session_id, session = await service.start(READER)
    clock.advance(timedelta(seconds=20))  # within the minute: a call would not note the use
    for origin, csrf in ((None, session.csrf_token), ("https://evil.example", session.csrf_token), (SITE, None),
                         (SITE, "y" * 43)):
        with pytest.raises(RequestForgery) as refused:
            await service.stay(session_id, "POST", origin, csrf)
        assert refused.value.status == 403 and refused.value.principal == READER
    assert store.touches == 0

    stayed = await service.stay(session_id, "POST", SITE, session.csrf_token)
    assert store.touches == 1 and stayed.last_seen_at == clock.now
    described = service.describe(stayed)
    assert described["expiresIn"] == 30 * 60 and described["csrfToken"] == session.csrf_token
    clock.advance(timedelta(minutes=29, seconds=59))
    assert service.describe(await service.resume(session_id, use=False))["expiresIn"] == 1  # as stored

    await service.end(session_id)
    with pytest.raises(SignInRequired):
        await service.stay(session_id, "POST", SITE, session.csrf_token)


async def test_an_unknown_or_ended_session_asks_to_sign_in() -> None:
    clock = Clock()
    service = sessions(clock)
    session_id, _ = await service.start(READER)
    assert (await service.end(session_id)) is not None
    for presented in (session_id, None, "not-an-id", "2026010520." + "b" * 43):
        with pytest.raises(SignInRequired) as refused:
            await service.resume(presented)
        assert refused.value.status == 401 and refused.value.slug == "unauthenticated"
    assert await service.end(session_id) is None


async def test_a_session_deleted_while_its_use_is_noted_asks_to_sign_in() -> None:
    """Signed out in another tab (or purged) between the read of the session and the note of its use: the use
    finds no session to note, and the request is refused as from no session, not served."""
    class DeletedMeanwhile(FakeSessions):
        async def touch(self, bucket: str, key: str, at: Any) -> bool:
            self.sessions.pop((bucket, key), None)
            return await super().touch(bucket, key, at)

    clock, store = Clock(), DeletedMeanwhile()
    service = sessions(clock, store)
    session_id, _ = await service.start(READER)
    clock.advance(timedelta(minutes=1))  # its use is noted at this request
    with pytest.raises(SignInRequired, match="The session has ended") as refused:
        await service.resume(session_id)
    assert refused.value.status == 401 and store.touches == 0


async def test_reads_by_cookie_need_no_csrf_token_and_changes_need_origin_and_token() -> None:
    service = sessions(Clock())
    session_id, session = await service.start(READER)
    cookie = f"{SESSION_COOKIE}={session_id}"

    assert await service.caller(cookie, "GET", None, None) == READER
    assert await service.caller(cookie, "POST", SITE, session.csrf_token) == READER
    assert await service.caller(cookie, "DELETE", SITE.upper(), session.csrf_token) == READER
    for origin, csrf in ((None, session.csrf_token), ("https://evil.example", session.csrf_token),
                         ("null", session.csrf_token), (SITE + ":8443", session.csrf_token), (SITE, None),
                         (SITE, ""), (SITE, session.csrf_token + "x"), (SITE, "x" * 43),
                         ("https://connéctions.contoso.example", session.csrf_token),  # not a TypeError (a 500)
                         (SITE, "é" * 43)):
        for method in ("POST", "PATCH", "PUT", "DELETE"):
            with pytest.raises(RequestForgery) as refused:
                await service.caller(cookie, method, origin, csrf)
            assert refused.value.status == 403


async def test_a_get_that_changes_state_by_cookie_needs_the_csrf_token_and_the_origin_when_one_is_sent() -> None:
    # The OAuth authorize route: a GET that starts a sign-in which creates or rebinds a connection. A link on another
    # site reaches it with the cookie (SameSite=Lax) but cannot send the token; a same-origin fetch sends no Origin.
    service = sessions(Clock())
    session_id, session = await service.start(READER)
    cookie = f"{SESSION_COOKIE}={session_id}"

    assert await service.caller(cookie, "GET", None, session.csrf_token, changes=True) == READER
    assert await service.caller(cookie, "GET", SITE, session.csrf_token, changes=True) == READER
    for origin, csrf in ((None, None), (SITE, None), (None, ""), (None, session.csrf_token + "x"),
                         ("https://evil.example", session.csrf_token), ("null", session.csrf_token)):
        with pytest.raises(RequestForgery) as refused:
            await service.caller(cookie, "GET", origin, csrf, changes=True)
        assert refused.value.status == 403


async def test_another_sessions_csrf_token_does_not_do() -> None:
    service = sessions(Clock())
    first, _ = await service.start(READER)
    _, other = await service.start(READER)
    with pytest.raises(RequestForgery):
        await service.caller(f"{SESSION_COOKIE}={first}", "POST", SITE, other.csrf_token)


async def test_a_sessions_caller_is_authorized_by_the_same_roles() -> None:
    service = sessions(Clock())
    session_id, _ = await service.start(READER)
    caller = await service.caller(f"{SESSION_COOKIE}={session_id}", "GET", None, None)
    assert authorize(caller, "Reader", "azure-key-vault") == "AppConnections.Reader"
    with pytest.raises(Forbidden):
        authorize(caller, "Writer", "azure-key-vault")


async def test_expired_sessions_are_purged_by_hour_and_at_each_sign_in() -> None:
    clock, store = Clock(), FakeSessions()
    service = sessions(clock, store)
    await service.start(READER)
    clock.advance(timedelta(hours=9))
    assert await service.purge_expired() == 1 and store.sessions == {}
    await service.start(READER)
    clock.advance(timedelta(hours=9))
    await sign_in(clock, store, Endpoint()).begin(None)
    assert store.sessions == {}


# -- the sign-in ---------------------------------------------------------------------------------------------------
class Endpoint:
    """The authority's token endpoint: the forms it was sent; answers an ID token of the test's making."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.claims: dict[str, Any] = {}

    async def redeem(self, tenant: str, form: Mapping[str, str]) -> TokenResult:
        assert tenant == TENANT
        self.forms.append(dict(form))
        return TokenResult("access", None, 2_000_000_000, {}, id_token=token(self.claims))


def sign_in(clock: Clock, store: FakeSessions, endpoint: Endpoint, assertion: Any = None, **env: str) -> SignIn:
    from shared.auth import SigningKeys, TokenValidator

    settings = load_settings({**ENV, **env})
    return SignIn(settings, store, endpoint, TokenValidator(settings, SigningKeys(settings, Tenant().fetch)), clock,
                  assertion)


async def test_the_sign_in_starts_with_pkce_s256_a_state_and_a_nonce() -> None:
    store = FakeSessions()
    url, state = await sign_in(Clock(), store, Endpoint()).begin("//evil.example", "ada@contoso.example")

    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{AUTHORITY}/{TENANT}/oauth2/v2.0/authorize"
    assert query["client_id"] == API and query["response_type"] == "code" and query["scope"] == "openid profile"
    assert query["redirect_uri"] == f"{SITE}/auth/callback" and query["state"] == state
    assert query["code_challenge_method"] == "S256" and query["login_hint"] == "ada@contoso.example"
    [pending] = store.logins.values()
    verifier_hash = base64.urlsafe_b64encode(hashlib.sha256(pending.verifier.encode()).digest()).rstrip(b"=")
    assert query["code_challenge"] == verifier_hash.decode() and query["nonce"] == pending.nonce
    assert pending.return_to == DEFAULT_RETURN_TO  # another origin's return path is ignored
    assert "console-secret" not in url and pending.verifier not in url
    assert (pending.bucket, pending.key) == id_keys(state)
    assert "prompt" not in query  # the user named: no account picker


@pytest.mark.parametrize("hint", ["ada contoso@example", "ada@contoso.example\nx", "ada\"@contoso.example",
                                  "a" * 257, "adá@contoso.example"])
async def test_a_login_hint_that_is_not_a_user_name_is_not_passed_on(hint: str) -> None:
    """``login_hint`` goes to Entra ID only when it looks like a user name (letters, digits, ``._%+@-``, at most
    256 characters); anything else is dropped, and the sign-in shows the account picker as without one."""
    url, _ = await sign_in(Clock(), FakeSessions(), Endpoint()).begin(None, hint, select_account=True)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert "login_hint" not in query and query["prompt"] == "select_account"


async def test_a_sign_in_after_a_sign_out_asks_entra_which_account() -> None:
    """(Review W.) Entra's own session would sign the last person in again, without asking, on a shared machine."""
    url, _ = await sign_in(Clock(), FakeSessions(), Endpoint()).begin(None, select_account=True)
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["prompt"] == "select_account"
    plain, _ = await sign_in(Clock(), FakeSessions(), Endpoint()).begin(None)
    assert "prompt" not in dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(plain).query))


async def test_the_callback_redeems_the_code_with_the_verifier_and_names_the_user() -> None:
    clock, store, endpoint = Clock(), FakeSessions(), Endpoint()
    flow = sign_in(clock, store, endpoint)
    _, state = await flow.begin("/organization/app-connections/azure-key-vault/1")
    [pending] = store.logins.values()
    endpoint.claims = {"nonce": pending.nonce, "name": "Ada Lovelace"}

    done = await flow.complete({"code": "the-code", "state": state}, state)

    assert done.principal == READER and done.display_name == "Ada Lovelace"
    assert done.return_to == "/organization/app-connections/azure-key-vault/1"
    [form] = endpoint.forms
    assert form == {"grant_type": "authorization_code", "client_id": API, "code": "the-code",
                    "redirect_uri": f"{SITE}/auth/callback", "code_verifier": pending.verifier,
                    "scope": "openid profile", "client_secret": "console-secret"}
    with pytest.raises(InvalidRequest):  # single use
        await flow.complete({"code": "the-code", "state": state}, state)


async def test_a_callback_in_another_browser_or_after_ten_minutes_is_refused() -> None:
    clock, store, endpoint = Clock(), FakeSessions(), Endpoint()
    flow = sign_in(clock, store, endpoint)
    _, state = await flow.begin(None)
    _, other = await flow.begin(None)
    for cookie in (None, "", other):
        with pytest.raises(InvalidRequest):
            await flow.complete({"code": "c", "state": state}, cookie)
    clock.advance(timedelta(minutes=10))
    with pytest.raises(InvalidRequest):
        await flow.complete({"code": "c", "state": other}, other)
    assert endpoint.forms == []


async def test_an_id_token_of_another_sign_in_or_forged_is_refused() -> None:
    from tests.shared.test_auth import OTHER_KEY

    clock, store, endpoint = Clock(), FakeSessions(), Endpoint()
    flow = sign_in(clock, store, endpoint)
    _, state = await flow.begin(None)
    endpoint.claims = {"nonce": "another sign-in's"}
    with pytest.raises(Unauthorized):
        await flow.complete({"code": "c", "state": state}, state)

    _, state = await flow.begin(None)
    pending = store.logins[id_keys(state) or ("", "")]

    async def forged(tenant: str, form: Mapping[str, str]) -> TokenResult:
        return TokenResult("a", None, 0, {}, id_token=token({"nonce": pending.nonce}, key=OTHER_KEY))

    endpoint.redeem = forged  # type: ignore[method-assign]
    with pytest.raises(Unauthorized):
        await flow.complete({"code": "c", "state": state}, state)


async def test_an_id_token_that_names_no_user_signs_nobody_in() -> None:
    """The console is for people: an ID token of an application (``idtyp: app``) is refused, whatever its roles."""
    clock, store, endpoint = Clock(), FakeSessions(), Endpoint()
    flow = sign_in(clock, store, endpoint)
    _, state = await flow.begin(None)
    [pending] = store.logins.values()
    endpoint.claims = {"nonce": pending.nonce, "idtyp": "app"}
    with pytest.raises(Unauthorized, match="does not name a user"):
        await flow.complete({"code": "the-code", "state": state}, state)


async def test_an_authorization_code_over_4096_characters_is_refused_unredeemed() -> None:
    clock, store, endpoint = Clock(), FakeSessions(), Endpoint()
    flow = sign_in(clock, store, endpoint)
    _, state = await flow.begin(None)
    with pytest.raises(InvalidRequest, match="no authorization code"):
        await flow.complete({"code": "c" * 4097, "state": state}, state)
    assert endpoint.forms == []
    _, state = await flow.begin(None)
    [pending] = store.logins.values()
    endpoint.claims = {"nonce": pending.nonce}
    done = await flow.complete({"code": "c" * 4096, "state": state}, state)  # the longest taken
    assert done.principal == READER and len(endpoint.forms[0]["code"]) == 4096


async def test_entras_refusal_is_told_without_its_text() -> None:
    flow = sign_in(Clock(), FakeSessions(), Endpoint())
    _, state = await flow.begin(None)
    with pytest.raises(InvalidRequest) as refused:
        await flow.complete({"state": state, "error": "access_denied<script>",
                             "error_description": "AADSTS65004: User declined <b>"}, state)
    assert refused.value.detail == "Entra ID did not sign you in (access_deniedscript, AADSTS65004)."


async def test_the_managed_identitys_assertion_authenticates_the_client_when_federated() -> None:
    store, endpoint = FakeSessions(), Endpoint()
    asked: list[str] = []

    async def assertion() -> str:
        asked.append("mi")
        return "mi-assertion"

    flow = sign_in(Clock(), store, endpoint, assertion,
                   FEDERATION_IDENTITY_CLIENT_ID="aaaaaaaa-1111-1111-1111-111111111111")
    _, state = await flow.begin(None)
    endpoint.claims = {"nonce": next(iter(store.logins.values())).nonce}
    await flow.complete({"code": "c", "state": state}, state)
    [form] = endpoint.forms
    assert form["client_assertion"] == "mi-assertion" and "client_secret" not in form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def test_without_a_client_credential_the_sign_in_does_not_start() -> None:
    with pytest.raises(ServiceMisconfigured):
        await sign_in(Clock(), FakeSessions(), Endpoint(), CONSOLE_CLIENT_SECRET="").begin(None)
    with pytest.raises(ServiceMisconfigured):
        await sign_in(Clock(), FakeSessions(), Endpoint(), AUTH_AUDIENCE="https://contoso.example/api").begin(None)


def test_the_session_settings_are_bounded_and_an_unresolved_secret_is_none() -> None:
    from shared.settings import SettingsError

    for name, value in (("CONSOLE_SESSION_IDLE_MINUTES", "0"), ("CONSOLE_SESSION_ABSOLUTE_HOURS", "25"),
                        ("CONSOLE_SESSION_ABSOLUTE_HOURS", "eight")):
        with pytest.raises(SettingsError, match=name):
            load_settings({**ENV, name: value})
    reference = "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/console-client-secret/)"
    console = load_settings({**ENV, "CONSOLE_CLIENT_SECRET": reference}).console
    assert console.client_secret is None
    assert "console-secret" not in repr(load_settings(ENV))


async def test_the_daily_purge_removes_every_expired_sign_in_start_not_a_page_of_them() -> None:
    clock, store = Clock(), FakeSessions()
    sign = sign_in(clock, store, Endpoint())
    for _ in range(250):  # anonymous starts, never finished
        await sign.begin(None)
    clock.advance(timedelta(hours=2))
    service = sessions(clock, store)
    assert await service.purge_expired() == 100  # a page, as a sign-in removes
    assert await service.purge_all_expired() == 150 and store.logins == {}
