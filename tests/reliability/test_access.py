"""Access: every registered function but the OAuth callback, the console's static page and its sign-in requires an
Entra ID access token (there is no function key), and the callback reads nothing but ``code``, ``state``, ``error`` and
``error_description``.

The functions are enumerated from ``function_app.app`` through ``localdev.host.index_functions`` (which calls
``get_functions()`` once per process and caches it, so this shares the index with the session's local host), and
every route is called without a token, with a malformed one and with a token for another API.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from localdev.host import LocalHost, index_functions, load_function_app

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CALLBACK = "app_connection_oauth_callback"
CONSOLE = {"console_root", "console_page", "console_connection_page", "console_asset"}
# The console's sign-in reads no token: the session cookie is its only credential (tests/e2e/test_console_sign_in.py).
SIGN_IN = {"console_login": 302, "console_callback": 400, "console_session": 401, "console_stay": 401,
           "console_logout": 403}


def _triggers() -> list[tuple[str, dict[str, Any]]]:
    app = load_function_app("function_app", ROOT)
    found = []
    for function in index_functions(app):
        name = function.get_function_name()
        trigger = next(b for b in function.get_bindings_dict()["bindings"] if b["type"].endswith("Trigger"))
        found.append((name, trigger))
    return found


def test_every_function_is_an_http_route_or_a_timer(host_url):  # host_url: index after the host, never twice
    triggers = _triggers()
    http = {name: trigger for name, trigger in triggers if trigger["type"] == "httpTrigger"}
    timers = {name for name, trigger in triggers if trigger["type"] == "timerTrigger"}
    assert timers == {"rotate_due_credentials", "enforce_audit_retention", "check_connection_health"}
    assert {name for name, _ in triggers} == set(http) | timers, "a trigger other than HTTP and timer appeared"
    assert len(http) >= 15


def _sample(route: str) -> str:
    values = {"app": "azure-key-vault", "connectionId": "00000000-0000-0000-0000-000000000000",
              "connectionName": "no-such-name"}
    return "/" + re.sub(r"\{(\w+)(?::[^}]*)?\??\}", lambda m: values.get(m.group(1), "x"), route)


def test_every_route_but_the_callback_refuses_a_missing_bad_or_foreign_token(host_url, local_env):
    standin = local_env.standin
    with httpx.Client(verify=str(standin.ca_path)) as http:
        foreign = http.post(f"{standin.url}/{local_env.identity.tenant_id}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": local_env.identity.client_id,
            "client_secret": local_env.identity.client_secret, "scope": "https://vault.azure.net/.default",
        }).json()["access_token"]
    host = LocalHost(load_function_app("function_app", ROOT), ROOT / "host.json", run_timers=False)
    checked = 0
    with httpx.Client(base_url=host_url, timeout=60) as client:
        for info in host.http_functions():
            path = _sample(info.route)
            for method in sorted(info.methods or {"GET"}):
                for headers in ({}, {"Authorization": "Bearer nope"}, {"x-functions-key": "a-key"},
                                {"Authorization": f"Bearer {foreign}"}):
                    response = client.request(method, path, headers=headers)
                    if info.name in CONSOLE:  # the static page and its assets: the same for everyone, no data
                        assert response.status_code in (200, 302, 404), (info.name, response.status_code)
                        assert "application/json" not in response.headers.get("content-type", "")
                    elif info.name in SIGN_IN:  # to the authority; no state; no session; no Origin
                        assert response.status_code == SIGN_IN[info.name], (info.name, response.status_code)
                        # No session is made: at most the login cookie is set or the session cookie cleared.
                        assert all(line.startswith(("__Host-appconn-login-", "__Host-appconn=;"))
                                   for line in response.headers.get_list("set-cookie")), info.name
                    elif info.name == CALLBACK:
                        assert response.status_code == 400, (info.name, response.status_code)
                        assert response.headers["content-type"].startswith("text/html")
                    else:
                        assert response.status_code == 401, (info.name, method, path, response.status_code)
                        assert response.headers["content-type"].startswith("application/problem+json")
                        assert response.headers["www-authenticate"].startswith("Bearer")
                    checked += 1
    assert checked >= 4 * 15


@pytest.mark.parametrize("extra", ["foo", "redirect_uri", "code_verifier", "admin_consent", "x-functions-key"])
def test_the_callback_refuses_any_other_query_parameter(api, extra):
    page = api.get("/organization/app-connections/azure/oauth/callback",
                   params={"code": "c", "state": "s" * 16, extra: "1"})
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert "parameter it should not" in page.text


def test_the_callback_tolerates_what_entra_adds(api):
    # session_state (Entra) and iss (RFC 9207) are ignored: the failure is about the unknown state, not them.
    page = api.get("/organization/app-connections/azure/oauth/callback",
                   params={"code": "c", "state": "s" * 16, "session_state": "x", "iss": "https://login"})
    assert page.status_code == 400
    assert "parameter it should not" not in page.text and "unknown or was already used" in page.text
