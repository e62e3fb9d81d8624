"""Access: every registered function but the OAuth callback needs a function key, and the callback reads
nothing but ``code``, ``state``, ``error`` and ``error_description``.

The functions are enumerated from ``function_app.app`` through ``localdev.host.index_functions`` (which calls
``get_functions()`` once per process and caches it, so this shares the index with the session's local host).
The key is then enforced by a second, unserved ``LocalHost`` view of the same index, driven in process.
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
KEY = "reliability-function-key-0123456789"
STRICT = {"function", "admin"}


def _triggers() -> list[tuple[str, dict[str, Any]]]:
    app = load_function_app("function_app", ROOT)
    found = []
    for function in index_functions(app):
        name = function.get_function_name()
        trigger = next(b for b in function.get_bindings_dict()["bindings"] if b["type"].endswith("Trigger"))
        found.append((name, trigger))
    return found


def _level(trigger: dict[str, Any]) -> str:
    value = trigger.get("authLevel")
    return str(getattr(value, "value", value) or "function").lower()


def test_every_function_but_the_callback_requires_a_key(host_url):  # host_url: index after the host, never twice
    triggers = _triggers()
    http = {name: trigger for name, trigger in triggers if trigger["type"] == "httpTrigger"}
    timers = {name for name, trigger in triggers if trigger["type"] == "timerTrigger"}
    assert timers == {"rotate_due_credentials"}
    assert {name for name, _ in triggers} == set(http) | timers, "a trigger other than HTTP and timer appeared"
    assert len(http) >= 14
    levels = {name: _level(trigger) for name, trigger in http.items()}
    assert levels.pop(CALLBACK) == "anonymous"
    weak = {name: level for name, level in levels.items() if level not in STRICT}
    assert weak == {}, f"functions that do not require a key: {weak}"


def _sample(route: str) -> str:
    values = {"app": "azure-key-vault", "connectionId": "00000000-0000-0000-0000-000000000000",
              "connectionName": "no-such-name"}
    return "/" + re.sub(r"\{(\w+)(?::[^}]*)?\??\}", lambda m: values.get(m.group(1), "x"), route)


@pytest.fixture(scope="module")
def keyed_host(host_url) -> LocalHost:
    """The same functions (index cached: ``get_functions()`` is not called again) with a key required."""
    return LocalHost(load_function_app("function_app", ROOT), ROOT / "host.json", function_key=KEY,
                     run_timers=False)


async def test_the_key_is_enforced_on_every_route_but_the_callback(keyed_host):
    transport = httpx.ASGITransport(app=keyed_host.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        checked = 0
        for info in keyed_host.http_functions():
            path = _sample(info.route)
            for method in sorted(info.methods or {"GET"}):
                for headers, params in (({}, {}), ({"x-functions-key": "wrong"}, {}), ({}, {"code": "wrong"})):
                    response = await client.request(method, path, headers=headers, params=params)
                    if info.name == CALLBACK:
                        assert response.status_code == 400, (info.name, response.status_code)
                        assert response.headers["content-type"].startswith("text/html")
                    else:
                        assert response.status_code == 401, (info.name, method, path, response.status_code)
                        assert response.headers["content-type"].startswith("application/problem+json")
                    checked += 1
        assert checked >= 3 * 14
        for auth in ({"headers": {"x-functions-key": KEY}}, {"params": {"code": KEY}}):
            response = await client.get("/api/v1/openapi.json", **auth)  # type: ignore[arg-type]
            assert response.status_code == 200


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
