"""The console's sign-in end to end, through the local host and the stand-in (Entra ID) over real HTTP: the
authorization code flow with PKCE, a ``__Host-`` session cookie holding only an opaque id, the API accepting it
with the same role checks and audit as a bearer token, CSRF and Origin on changes, expiry and sign-out.

httpx keeps no ``Secure`` cookie for an http:// URL (browsers do for localhost), so the tests carry the cookies
themselves: what the service sets is exactly what they send back."""

from __future__ import annotations

import hashlib
import logging
import ssl
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from localdev.environment import DEMO_USERS, LocalEnvironment
from shared.sessions import LOGIN_COOKIE_PREFIX, login_cookie

pytestmark = pytest.mark.e2e

SESSION = "__Host-appconn"
READER, OPERATOR = sorted(DEMO_USERS)[1], sorted(DEMO_USERS)[0]
UNAUTHENTICATED = "urn:app-connections:problem:unauthenticated"


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie line, for each cookie the answer sets."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def cookie_of(line: str) -> str:
    return line.split(";", 1)[0].split("=", 1)[1]


def login_state(login: httpx.Response) -> str:
    """The state ``/auth/login`` bound to the browser, from its cookie (named for the state)."""
    [(name, line)] = [(n, line) for n, line in set_cookies(login).items()
                      if n.startswith(LOGIN_COOKIE_PREFIX) and cookie_of(line)]  # not one it clears
    state = cookie_of(line)
    assert name == login_cookie(state)
    return state


@dataclass
class Browser:
    """A signed-in browser: its session cookie and what ``/auth/session`` told it."""

    client: httpx.Client
    origin: str
    session_id: str
    csrf: str
    session: dict[str, object]

    def headers(self, *, csrf: str | None = "", origin: str | None = "") -> dict[str, str]:
        headers = {"cookie": f"{SESSION}={self.session_id}"}
        if csrf is not None:
            headers["x-csrf-token"] = csrf or self.csrf
        if origin is not None:
            headers["origin"] = origin or self.origin
        return headers


@pytest.fixture(scope="module")
def client(host_url: str, local_env: LocalEnvironment, secrets_used) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """The browser's HTTP client. Its own transport's debug log (httpcore prints response headers, the session
    cookie among them) is off, so that the final secret scan looks for session ids in what the service logs."""
    assert "CONSOLE_CLIENT_SECRET" not in local_env.settings  # the managed identity's federated credential signs in
    transport_log = logging.getLogger("httpcore")
    level = transport_log.level
    transport_log.setLevel(logging.INFO)
    try:
        with httpx.Client(base_url=host_url, timeout=60) as client:
            yield client
    finally:
        transport_log.setLevel(level)


def sign_in(client: httpx.Client, local_env: LocalEnvironment, upn: str, return_to: str | None = None,
            secrets_used=None) -> tuple[httpx.Response, str]:  # type: ignore[no-untyped-def]
    """The browser's round trip: /auth/login -> the stand-in's authorize -> /auth/callback. Returns the callback's
    answer and the session id it set."""
    assert local_env.standin is not None
    params = {"loginHint": upn} | ({"returnTo": return_to} if return_to else {})
    login = client.get("/auth/login", params=params)
    assert login.status_code == 302, login.text
    state = login_state(login)
    authorize = login.headers["location"]
    with httpx.Client(verify=ssl.create_default_context(cafile=str(local_env.standin.ca_path)), timeout=30) as entra:
        answer = entra.get(authorize)
    assert answer.status_code == 302, answer.text
    callback = urllib.parse.urlsplit(answer.headers["location"])
    assert callback.path == "/auth/callback"
    done = client.get(f"{callback.path}?{callback.query}", headers={"cookie": f"{login_cookie(state)}={state}"})
    session_id = cookie_of(set_cookies(done)[SESSION]) if SESSION in set_cookies(done) else ""
    if secrets_used is not None:
        secrets_used.add(session_id)
    return done, session_id


def browser(client: httpx.Client, local_env: LocalEnvironment, upn: str, secrets_used) -> Browser:  # type: ignore[no-untyped-def]
    done, session_id = sign_in(client, local_env, upn, secrets_used=secrets_used)
    assert done.status_code == 302, done.text
    described = client.get("/auth/session", headers={"cookie": f"{SESSION}={session_id}"})
    assert described.status_code == 200, described.text
    body = described.json()
    return Browser(client, local_env.settings["SITE_URL"], session_id, body["csrfToken"], body)


def test_sign_in_sets_an_opaque_host_cookie_and_describes_the_user(client, local_env, secrets_used):  # type: ignore[no-untyped-def]
    done, session_id = sign_in(client, local_env, READER, "/organization/app-connections/azure-key-vault/abc",
                               secrets_used)

    assert done.status_code == 302
    assert done.headers["location"] == "/organization/app-connections/azure-key-vault/abc"
    cookies = set_cookies(done)
    attributes = [part.strip() for part in cookies[SESSION].split(";")[1:]]
    assert set(attributes) >= {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"}
    assert not any(a.lower().startswith(("domain", "max-age", "expires")) for a in attributes)  # goes with the browser
    [login] = [name for name in cookies if name.startswith(LOGIN_COOKIE_PREFIX)]
    assert cookies[login].split(";")[0] == f"{login}="  # the sign-in's cookie is cleared
    assert "." in session_id and len(session_id) > 40  # an opaque id, no token
    described = client.get("/auth/session", headers={"cookie": f"{SESSION}={session_id}"})
    assert described.status_code == 200
    body = described.json()
    assert body["user"]["name"] == DEMO_USERS[READER][0]
    assert body["user"]["username"] == READER  # preferred_username, as the audit names the user
    assert body["user"]["tid"] == local_env.settings["AUTH_TENANT_ID"]
    assert body["roles"] == ["AppConnections.Reader"]
    assert body["csrfToken"] and body["expiresAt"].endswith("Z")
    assert described.headers["cache-control"] == "no-store"


def test_a_return_path_of_another_origin_is_ignored(client, local_env, secrets_used):  # type: ignore[no-untyped-def]
    done, _ = sign_in(client, local_env, READER, "//evil.example/phish", secrets_used)
    assert done.headers["location"] == "/organization/app-connections"


def test_a_reader_by_cookie_can_read_and_cannot_change(client, local_env, secrets_used):  # type: ignore[no-untyped-def]
    reader = browser(client, local_env, READER, secrets_used)

    listed = client.get("/api/v1/app-connections/azure-key-vault", headers=reader.headers(csrf=None, origin=None))
    assert listed.status_code == 200, listed.text
    refused = client.delete("/api/v1/app-connections/azure-key-vault/00000000-0000-0000-0000-000000000000",
                            headers=reader.headers())
    assert refused.status_code == 403
    assert refused.json()["requiredRole"] == "AppConnections.Writer"


def test_a_change_by_cookie_needs_the_csrf_token_and_the_services_origin(client, local_env, secrets_used, api):  # type: ignore[no-untyped-def]
    operator = browser(client, local_env, OPERATOR, secrets_used)
    connection_id = str(uuid.uuid4())
    missing = f"/api/v1/app-connections/azure-key-vault/{connection_id}"

    no_csrf = client.delete(missing, headers=operator.headers(csrf=None))
    wrong_csrf = client.delete(missing, headers=operator.headers(csrf="x" * 43))
    no_origin = client.delete(missing, headers=operator.headers(origin=None))
    other_origin = client.delete(missing, headers=operator.headers(origin="https://evil.example"))
    for refused in (no_csrf, wrong_csrf, no_origin, other_origin):
        assert refused.status_code == 403
        assert refused.json()["type"] == "urn:app-connections:problem:csrf-rejected"
    # (Review H, L1.) A change forged against a person signed in is the refusal most worth recording: each is
    # audited with who was signed in, as a refusal for want of a role is.
    logged = api.get("/api/v1/audit-logs", params={"action": "access.refused", "connectionId": connection_id})
    records = logged.json()["auditLogs"]
    assert len(records) == 4 and {r["outcome"] for r in records} == {"403"}, records
    assert all(r["actor"]["type"] == "user" and r["detail"].startswith(f"DELETE {missing}") for r in records)
    allowed = client.delete(missing, headers=operator.headers())
    assert allowed.status_code == 404, allowed.text  # authorized as Writer: the connection does not exist


def test_a_sign_in_started_by_cookie_needs_the_csrf_token_so_a_link_on_another_site_cannot_start_one(  # type: ignore[no-untyped-def]
        client, local_env, secrets_used, api):
    operator = browser(client, local_env, OPERATOR, secrets_used)
    authorize = "/api/v1/app-connections/azure-key-vault/oauth/authorize"
    name = f"csrf-{uuid.uuid4().hex[:8]}"
    for linked in ({}, {"sec-fetch-site": "cross-site"}):  # what a link or a form of another site sends: the cookie
        refused = client.get(authorize, params={"name": name}, headers={**operator.headers(csrf=None, origin=None),
                                                                         **linked})
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"] == "urn:app-connections:problem:csrf-rejected"
    other_site = client.get(authorize, params={"name": name}, headers=operator.headers(origin="https://evil.example"))
    assert other_site.status_code == 403
    logged = api.get("/api/v1/audit-logs", params={"action": "connection.authorize"}).json()["auditLogs"]
    assert not [r for r in logged if name in str(r)], "a refused sign-in is not started, so not audited"
    # The console's own script: the token in its header, and no Origin (a browser sends none on a same-origin GET).
    started = client.get(authorize, params={"name": name}, headers={**operator.headers(origin=None),
                                                                    "accept": "application/json"})
    assert started.status_code == 200, started.text
    assert started.json()["authorizationUrl"].startswith("https://")


def test_a_change_by_cookie_is_audited_with_the_user_as_actor(client, local_env, secrets_used, api):  # type: ignore[no-untyped-def]
    operator = browser(client, local_env, OPERATOR, secrets_used)
    missing = "/api/v1/app-connections/azure-key-vault/11111111-1111-1111-1111-111111111111"
    assert client.delete(missing, headers=operator.headers()).status_code == 404

    oid = operator.session["user"]["oid"]  # type: ignore[index]
    records = api.get("/api/v1/audit-logs", params={"actor": oid}).json()
    actions = [(r["action"], r["outcome"], r["actor"]["type"]) for r in records["auditLogs"]]
    assert ("session.start", "succeeded", "user") in actions
    deleted = [r for r in records["auditLogs"] if r["action"] != "session.start" and r["outcome"] == "started"]
    assert deleted and deleted[0]["actor"]["role"] == "AppConnections.Writer"
    assert operator.session_id not in str(records)


def test_sign_out_ends_the_session_on_the_server(client, local_env, secrets_used, api):  # type: ignore[no-untyped-def]
    reader = browser(client, local_env, READER, secrets_used)

    forged = client.post("/auth/logout", headers=reader.headers(csrf="y" * 43))
    assert forged.status_code == 403
    oid = reader.session["user"]["oid"]  # type: ignore[index]
    refused = api.get("/api/v1/audit-logs", params={"actor": oid, "action": "access.refused"}).json()["auditLogs"]
    assert [r["detail"].split(":", 1)[0] for r in refused][:1] == ["POST /auth/logout"]  # a forgery's attempt
    out = client.post("/auth/logout", headers=reader.headers())
    assert out.status_code == 204
    assert set_cookies(out)[SESSION].startswith(f"{SESSION}=;") and "Max-Age=0" in set_cookies(out)[SESSION]

    again = client.get("/auth/session", headers=reader.headers(csrf=None, origin=None))
    assert again.status_code == 401
    assert again.json()["type"] == UNAUTHENTICATED
    assert again.json()["loginUrl"] == "/auth/login"
    listed = client.get("/api/v1/app-connections/azure-key-vault", headers=reader.headers(csrf=None, origin=None))
    assert listed.status_code == 401 and listed.json()["loginUrl"] == "/auth/login"
    ended = api.get("/api/v1/audit-logs", params={"actor": oid, "action": "session.end"}).json()["auditLogs"]
    assert [r["outcome"] for r in ended][:2] == ["succeeded", "started"]  # newest first: recorded before it ran


async def test_staying_signed_in_is_a_use_noted_at_once_and_needs_the_csrf_token_and_the_services_origin(  # type: ignore[no-untyped-def]
        client, local_env, secrets_used, clients, api):
    """``POST /auth/session`` (the console's Stay signed in): no role needed, the idle expiry moved even within a
    minute of the last use, the session described as ``GET /auth/session`` does; a forged one is refused (403
    ``csrf-rejected``), recorded, and moves nothing."""
    import asyncio

    reader = browser(client, local_env, READER, secrets_used)
    table = await clients.table("Sessions")
    keys = {"PartitionKey": "s" + reader.session_id.split(".", 1)[0],
            "RowKey": hashlib.sha256(reader.session_id.encode()).hexdigest()}
    half_a_minute_ago = datetime.now(UTC) - timedelta(seconds=30)
    await table.update_entity({**keys, "LastSeenAt": half_a_minute_ago})

    for headers in (reader.headers(csrf="y" * 43), reader.headers(csrf=None), reader.headers(origin=None),
                    reader.headers(origin="https://evil.example")):
        forged = await asyncio.to_thread(client.post, "/auth/session", headers=headers)
        assert forged.status_code == 403, forged.text
        assert forged.json()["type"].endswith(":csrf-rejected") and "csrfToken" not in forged.text
    assert (await table.get_entity(keys["PartitionKey"], keys["RowKey"]))["LastSeenAt"] == half_a_minute_ago
    oid = reader.session["user"]["oid"]  # type: ignore[index]
    refused = api.get("/api/v1/audit-logs", params={"actor": oid, "action": "access.refused"}).json()["auditLogs"]
    assert [r["detail"].split(":", 1)[0] for r in refused][:4] == ["POST /auth/session"] * 4  # newest first

    stayed = await asyncio.to_thread(client.post, "/auth/session", headers=reader.headers())
    assert stayed.status_code == 200, stayed.text
    assert stayed.headers["cache-control"] == "no-store"
    body = stayed.json()
    assert set(body) == set(reader.session) and body["csrfToken"] == reader.csrf
    assert body["expiresIn"] >= 30 * 60 - 5  # a GET of the API within the minute would have left it at 29 min 30 s
    touched = await table.get_entity(keys["PartitionKey"], keys["RowKey"])
    assert touched["LastSeenAt"] > half_a_minute_ago + timedelta(seconds=25)
    assert reader.session_id not in str(api.get("/api/v1/audit-logs", params={"actor": oid}).json())

    nobody = await asyncio.to_thread(client.post, "/auth/session", headers={"origin": reader.origin})
    assert nobody.status_code == 401 and nobody.json()["type"] == UNAUTHENTICATED


async def test_an_idle_session_is_refused_with_a_login_url(client, local_env, secrets_used, clients):  # type: ignore[no-untyped-def]
    reader = browser(client, local_env, READER, secrets_used)
    bucket = reader.session_id.split(".", 1)[0]
    table = await clients.table("Sessions")
    await table.update_entity({"PartitionKey": "s" + bucket,
                               "RowKey": hashlib.sha256(reader.session_id.encode()).hexdigest(),
                               "LastSeenAt": datetime.now(UTC) - timedelta(hours=2)})

    import asyncio

    listed = await asyncio.to_thread(client.get, "/api/v1/app-connections/azure-key-vault",
                                     headers=reader.headers(csrf=None, origin=None))
    assert listed.status_code == 401
    assert listed.json()["type"] == UNAUTHENTICATED and listed.json()["loginUrl"] == "/auth/login"
    assert set_cookies(listed)[SESSION].startswith(f"{SESSION}=;")


def test_a_callback_from_another_browser_gets_a_page_with_a_link_to_sign_in(client, local_env):  # type: ignore[no-untyped-def]
    assert local_env.standin is not None
    login = client.get("/auth/login", params={"loginHint": READER})
    with httpx.Client(verify=ssl.create_default_context(cafile=str(local_env.standin.ca_path)), timeout=30) as entra:
        answer = entra.get(login.headers["location"])
    callback = urllib.parse.urlsplit(answer.headers["location"])
    stolen = client.get(f"{callback.path}?{callback.query}")  # no login cookie: not the browser that started it

    assert stolen.status_code == 400
    assert stolen.headers["content-type"].startswith("text/html")
    assert 'href="/auth/login"' in stolen.text
    assert SESSION not in set_cookies(stolen)
    assert "Traceback" not in stolen.text


def test_a_sign_in_this_browser_started_that_signs_no_one_in_is_audited_and_a_stray_answer_is_not(  # type: ignore[no-untyped-def]
        client, local_env, api):
    login = client.get("/auth/login", params={"loginHint": READER})
    state = login_state(login)
    marker = uuid.uuid4().hex  # the browser's user agent, to find this record
    refused = client.get("/auth/callback", params={"state": state, "error": "access_denied",
                                                   "error_description": "AADSTS65004: User declined to consent."},
                         headers={"cookie": f"{login_cookie(state)}={state}", "user-agent": marker})
    assert refused.status_code == 400 and "did not sign you in" in refused.text
    stray = client.get("/auth/callback", params={"state": state, "code": "x"},
                       headers={"cookie": f"{login_cookie(state)}={state}", "user-agent": marker})
    assert stray.status_code == 400  # the sign-in is used up: nothing is pending, nothing more is audited

    records = api.get("/api/v1/audit-logs", params={"action": "session.start"}).json()["auditLogs"]
    mine = [r for r in records if r.get("userAgent") == marker]
    assert [(r["outcome"], r["actor"]["id"], r["detail"]) for r in mine] == [
        ("refused", "anonymous", "console sign-in: Entra ID did not sign you in (access_denied, AADSTS65004).")]
    assert state not in str(records)


async def test_a_session_in_use_is_kept_alive_a_look_at_it_is_not_a_use_and_expired_ones_are_purged(  # type: ignore[no-untyped-def]
        client, local_env, secrets_used, clients):
    import asyncio

    reader = browser(client, local_env, READER, secrets_used)
    table = await clients.table("Sessions")
    keys = {"PartitionKey": "s" + reader.session_id.split(".", 1)[0],
            "RowKey": hashlib.sha256(reader.session_id.encode()).hexdigest()}
    five_minutes_ago = datetime.now(UTC) - timedelta(minutes=5)
    await table.update_entity({**keys, "LastSeenAt": five_minutes_ago})
    stale = {"PartitionKey": "s2020010100", "RowKey": "0" * 64, "Kind": "session", "UserId": "gone",
             "CsrfToken": "x", "CreatedAt": five_minutes_ago, "LastSeenAt": five_minutes_ago,
             "ExpiresAt": five_minutes_ago}
    await table.upsert_entity(stale)

    # the page's look at its session (when it should lapse) is not a use: it does not keep the session alive
    looked = await asyncio.to_thread(client.get, "/auth/session", headers=reader.headers(csrf=None, origin=None))
    assert looked.status_code == 200
    assert (await table.get_entity(keys["PartitionKey"], keys["RowKey"]))["LastSeenAt"] == five_minutes_ago
    listed = await asyncio.to_thread(client.get, "/api/v1/app-connections/azure-key-vault",
                                     headers=reader.headers(csrf=None, origin=None))
    assert listed.status_code == 200
    touched = await table.get_entity(keys["PartitionKey"], keys["RowKey"])
    assert touched["LastSeenAt"] > five_minutes_ago + timedelta(minutes=4)  # its last use, written

    await asyncio.to_thread(browser, client, local_env, READER, secrets_used)  # a sign-in purges what expired
    remaining = [e async for e in table.query_entities("PartitionKey eq 's2020010100'")]
    assert remaining == []

    from shared.store.sessions import SessionTable

    ended = SessionTable(clients)  # noting the use of an ended session does not bring it back
    assert await ended.touch("2020010100", "1" * 64, datetime.now(UTC)) is False
    assert await ended.get("2020010100", "1" * 64) is None


def test_two_tabs_signing_in_at_once_both_sign_in(client, local_env, secrets_used):  # type: ignore[no-untyped-def]
    """Two sign-ins started in one browser before either comes back (a restored browser, two alert links): each
    has its own cookie, and each callback finds its own; one cookie for both made the first fail (review S). A
    callback with only the other sign-in's cookie is still refused."""
    assert local_env.standin is not None
    logins = [client.get("/auth/login", params={"loginHint": READER, "returnTo": f"/organization/app-connections/{n}"})
              for n in ("azure-key-vault/a", "azure-key-vault/b")]
    states = [login_state(login) for login in logins]
    jar = "; ".join(f"{login_cookie(state)}={state}" for state in states)  # the browser sends both
    with httpx.Client(verify=ssl.create_default_context(cafile=str(local_env.standin.ca_path)), timeout=30) as entra:
        callbacks = [urllib.parse.urlsplit(entra.get(login.headers["location"]).headers["location"])
                     for login in logins]
    other = client.get(f"{callbacks[0].path}?{callbacks[0].query}",
                       headers={"cookie": f"{login_cookie(states[1])}={states[1]}"})
    assert other.status_code == 400 and "not started in this browser" in other.text
    for callback, where in zip(callbacks, ("a", "b"), strict=True):
        done = client.get(f"{callback.path}?{callback.query}", headers={"cookie": jar})
        assert done.status_code == 302, done.text
        assert done.headers["location"] == f"/organization/app-connections/azure-key-vault/{where}"
        secrets_used.add(cookie_of(set_cookies(done)[SESSION]))


def test_a_sign_in_clears_the_unfinished_ones_once_they_pile_up(client):  # type: ignore[no-untyped-def]
    """Four sign-ins left unfinished in one browser: the fifth clears their cookies as it sets its own."""
    jar = "; ".join(f"{login_cookie(str(n))}={n}" for n in range(4))
    login = client.get("/auth/login", headers={"cookie": jar})
    cookies = set_cookies(login)
    assert all(cookies[login_cookie(str(n))].split(";")[0] == f"{login_cookie(str(n))}=" for n in range(4))
    assert login_state(login)  # and its own is set


def test_signing_in_again_ends_the_session_the_browser_had(client, local_env, secrets_used):  # type: ignore[no-untyped-def]
    assert local_env.standin is not None
    before = browser(client, local_env, READER, secrets_used)
    login = client.get("/auth/login", params={"loginHint": OPERATOR})
    state = login_state(login)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(local_env.standin.ca_path)), timeout=30) as entra:
        callback = urllib.parse.urlsplit(entra.get(login.headers["location"]).headers["location"])
    done = client.get(f"{callback.path}?{callback.query}",
                      headers={"cookie": f"{login_cookie(state)}={state}; {SESSION}={before.session_id}"})
    after = cookie_of(set_cookies(done)[SESSION])
    secrets_used.add(after)

    assert after != before.session_id  # a new id at every sign-in: no fixation
    assert client.get("/auth/session", headers={"cookie": f"{SESSION}={before.session_id}"}).status_code == 401
    assert client.get("/auth/session", headers={"cookie": f"{SESSION}={after}"}).json()["roles"] == [
        "AppConnections.Reader", "AppConnections.Rotator", "AppConnections.Writer"]


@pytest.mark.parametrize("path", ["/auth/session", "/auth/logout", "/api/v1/app-connections/options"])
def test_a_cross_site_post_without_the_cookie_does_not_clear_it(client, path):  # type: ignore[no-untyped-def]
    """(Review of the session's fixes.) A form on another site posting here is a top-level POST, sent without the
    ``SameSite=Lax`` cookie; an answer clearing the cookie is applied all the same, and POST /auth/session's 401
    did: any site could sign a person's browser out of the console. Without a cookie nothing is cleared."""
    answer = client.post(path, headers={"origin": "https://evil.example",
                                        "content-type": "application/x-www-form-urlencoded"}, content=b"a=1")
    assert answer.status_code in (401, 403, 405), answer.text
    assert SESSION not in set_cookies(answer), (path, answer.status_code, answer.headers.get_list("set-cookie"))
