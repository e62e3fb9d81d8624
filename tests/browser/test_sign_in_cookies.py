"""Chromium keeps the console's ``__Host-`` cookies (Secure) over plain http on the loopback names: browsers count
http://localhost and http://127.0.0.1 as secure contexts, so the local host needs no TLS for the sign-in."""

from __future__ import annotations

from typing import Any

import pytest

from localdev.environment import LocalEnvironment

pytestmark = pytest.mark.e2e


def _host_only_secure(cookie: dict[str, Any], host: str) -> None:
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/" and cookie["domain"] == host  # host-only: no Domain attribute


def test_chromium_keeps_the_login_cookie_over_http_on_localhost(browser: Any, host_url: str) -> None:
    base = host_url.replace("127.0.0.1", "localhost")
    context = browser.new_context(ignore_https_errors=True)
    try:
        context.route("https://**/*", lambda route: route.abort())  # stop at the authority: keep the login cookie
        page = context.new_page()
        with page.expect_response(lambda response: "/auth/login" in response.url) as answer:
            page.goto(f"{base}/auth/login?returnTo=/organization/app-connections", wait_until="commit")
        set_cookie = answer.value.header_value("set-cookie") or ""
        assert set_cookie.startswith("__Host-appconn-login-") and "Secure" in set_cookie
        page.wait_for_timeout(300)
        kept = [c for c in context.cookies(base) if c["name"] == set_cookie.split("=", 1)[0]]
        assert kept, "Chromium dropped the Secure __Host- cookie on http://localhost"
        _host_only_secure(kept[0], "localhost")
    finally:
        context.close()


def test_chromium_signs_in_and_keeps_the_session_cookie_over_http_on_127_0_0_1(
        browser: Any, host_url: str, local_env: LocalEnvironment) -> None:
    assert local_env.standin is not None and local_env.api is not None
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(f"{host_url}/auth/login?loginHint=reader@contoso.example&returnTo=/auth/session")
        page.wait_for_url(f"{host_url}/organization/app-connections*")  # returnTo under /auth/ is ignored
        kept = [c for c in context.cookies(host_url) if c["name"] == "__Host-appconn"]
        assert kept, "Chromium dropped the Secure __Host- cookie on http://127.0.0.1"
        _host_only_secure(kept[0], "127.0.0.1")
        session = page.evaluate("async () => (await fetch('/auth/session', {credentials: 'same-origin'})).json()")
        assert session["roles"] == ["AppConnections.Reader"]
        assert "__Host-appconn" not in page.evaluate("() => document.cookie")  # HttpOnly: no script reads it
    finally:
        context.close()
