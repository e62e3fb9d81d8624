"""The OAuth functions: the callback is the one anonymous function, and its page escapes and locks down."""

import azure.functions as func
import pytest

from shared.functions.oauth import CALLBACK_ROUTE, _from_console, _wants_json, page


def test_every_route_but_the_callback_requires_a_role_and_every_change_is_audited():
    import function_app
    from localdev.host import index_functions

    guarded = {}
    sign_in = set()
    for function in index_functions(function_app.app):
        trigger = function.get_trigger().get_dict_repr()
        if trigger.get("route") is None:
            continue
        assert str(trigger["authLevel"]) == "ANONYMOUS"  # the access token is the gate, not a function key
        user_function = function.get_user_function()
        if user_function.__module__ == "shared.functions.console":  # the static page: no data (test_console)
            continue
        if user_function.__module__ == "shared.functions.console_auth":  # the console's sign-in (test_console_auth)
            sign_in.add(trigger["route"])
            continue
        guarded[(trigger["route"], tuple(str(m).rsplit(".", 1)[-1] for m in trigger["methods"]))] = (
            getattr(user_function, "required_role", None), getattr(user_function, "audit_action", None))
    assert guarded.pop((CALLBACK_ROUTE, ("GET",))) == (None, None)
    assert sign_in == {"auth/login", "auth/callback", "auth/session", "auth/logout"}
    assert all(role is not None for role, _ in guarded.values()), guarded
    changes = {key: action for key, (_, action) in guarded.items() if key[1] != ("GET",)}
    assert all(changes.values()), changes
    assert guarded[("api/v1/app-connections/{app}/oauth/authorize", ("GET",))] == ("Writer", "connection.authorize")


def test_the_page_escapes_and_forbids_everything():
    response = page("<b>title</b>", ["<script>x</script>", "a & b \"c\" 'd'"], 400)
    body = response.get_body().decode()
    assert "<script>" not in body and "<b>title" not in body
    assert "&lt;script&gt;x&lt;/script&gt;" in body and "a &amp; b &quot;c&quot; &#x27;d&#x27;" in body
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    headers = dict(response.headers)
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_json_is_given_to_clients_that_ask_for_it():
    def request(accept: str) -> func.HttpRequest:
        return func.HttpRequest(method="GET", url="http://localhost/x", headers={"accept": accept}, body=b"")

    assert _wants_json(request("application/json"))
    assert _wants_json(request("text/html;q=0.9, application/json;q=1"))
    assert not _wants_json(request("text/html,application/xhtml+xml,*/*;q=0.8"))
    assert not _wants_json(request(""))


def test_only_a_browser_with_a_console_session_cookie_is_sent_back_to_the_console():
    def request(cookie: str | None) -> func.HttpRequest:
        headers = {"cookie": cookie} if cookie is not None else {}
        return func.HttpRequest("GET", "http://h/" + CALLBACK_ROUTE, headers=headers, body=b"")

    assert _from_console(request("__Host-appconn=abc; other=1"))
    assert not _from_console(request(None))
    assert not _from_console(request("__Host-appconn="))
    assert not _from_console(request("__Host-appconn-login-0123456789ab=abc"))
    assert not _from_console(request("appconn=abc"))


async def test_a_callback_with_a_state_or_code_given_twice_is_refused_before_anything_is_read() -> None:
    from shared.functions.oauth import bp

    callback = next(b._function.get_user_function() for b in bp._function_builders
                    if b._function.get_function_name() == "app_connection_oauth_callback")
    req = func.HttpRequest("GET", "http://localhost/organization/app-connections/azure/oauth/callback?state=a&code=b"
                           "&state=c", headers={}, params={"state": "a", "code": "b"}, body=b"")
    response = await callback(req)  # no Table endpoint is configured: a read would fail as a 502, not a 400
    assert response.status_code == 400
    assert "more than once" in response.get_body().decode()


@pytest.mark.parametrize("cookie", [None, "__Host-appconn=the-session"])
async def test_a_failed_callback_from_the_console_links_back_to_its_page_and_elsewhere_says_to_close(
        cookie: str | None) -> None:
    """The console starts the sign-in in its own tab: a failure there said "You can close this window", which closed
    the console, with no way back to its page (review S). Elsewhere (an API client's URL) it still says so."""
    from shared.functions.oauth import bp

    callback = next(b._function.get_user_function() for b in bp._function_builders
                    if b._function.get_function_name() == "app_connection_oauth_callback")
    req = func.HttpRequest("GET", "http://localhost/organization/app-connections/azure/oauth/callback?state=a"
                           "&state=c", headers={"cookie": cookie} if cookie else {}, params={"state": "a"},
                           body=b"")
    body = (await callback(req)).get_body().decode()
    if cookie:
        assert '<a href="/organization/app-connections">Back to App Connections</a>' in body
        assert "close this window" not in body
    else:
        assert "<a " not in body and "You can close this window." in body


class _Writer:
    async def validate(self, authorization: str) -> object:
        from shared.auth import Principal

        return Principal("oid-w", "writer@contoso.example", "user", "t", frozenset({"AppConnections.Writer"}))


async def test_the_audit_records_of_a_re_authorization_name_the_connection(monkeypatch) -> None:
    """Found by a review: the connection a re-authorization names is a query parameter of the authorize route, and
    its audit records named none: a sign-in started against a given connection could not be found by its id."""
    from shared import wiring
    from shared.audit import AuditLog
    from shared.functions.oauth import authorize_app_connection_oauth
    from tests.lifecycle_harness import Harness, reauthorize_oauth

    h = Harness()
    existing = await reauthorize_oauth(h)
    monkeypatch.setattr(wiring, "token_validator", lambda: _Writer())
    monkeypatch.setattr(wiring, "audit_log", lambda: AuditLog(h.fakes.audit, h.fakes.clock))
    monkeypatch.setattr(wiring, "oauth_start", lambda: h.services().oauth)
    for named, recorded in ((existing.id.upper(), existing.id), ("not-an-id", None)):
        seen = len(h.fakes.audit.records)
        req = func.HttpRequest(
            "GET", "https://svc.example/api/v1/app-connections/azure-key-vault/oauth/authorize",
            headers={"authorization": "Bearer t", "accept": "application/json"},
            params={"connectionId": named}, route_params={"app": "azure-key-vault"}, body=b"")
        await authorize_app_connection_oauth(req)
        records = [r for r in h.fakes.audit.records[seen:] if r.action == "connection.authorize"]
        assert [r.outcome for r in records][:1] == ["started"] and len(records) == 2
        assert {r.connection_id for r in records} == {recorded}
