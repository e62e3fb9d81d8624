"""The console for a keyboard, screen-reader or zoomed-in user (WCAG 2.2 AA, review of accessibility): a warning
before the session ends, with a way to stay signed in that keeps what was typed (2.2.1); the focus kept where the
person was when the page is drawn anew or an action fails (2.4.3); a focus ring seen on the header's blue (1.4.11,
2.4.7); the Add dialog at 320 px without sideways scrolling (1.4.10); no motion with reduced motion asked (2.3.3)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PAGE
from tests.e2e.entra import register_app

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ACTIVE = ("document.activeElement === document.body ? 'BODY' : "
          "(document.activeElement.id || document.activeElement.tagName)")
WARNING = "document.getElementById('session-dialog').open"


def typing_in_the_add_dialog(page: Any) -> None:
    """The person is filling the Add dialog (slowly: typing is not a use of the session)."""
    page.click("#add-connection")
    page.check("#app-azure-key-vault", force=True)
    page.check("#method-certificate", force=True)
    page.fill("#field-privateKey", "-----BEGIN PRIVATE KEY-----\nTYPED-FOR-A-WHILE\n-----END PRIVATE KEY-----")
    page.fill("#field-name", "typed-for-a-while")


def on_a_clock(console: Any) -> list[str]:
    """The page's timers on a clock the test moves (the service's runs on: by it the session stays fresh); the
    session calls (``/auth/...``) and API calls the page makes from here."""
    page = console.page
    page.clock.install()
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    calls: list[str] = []
    page.on("request", lambda request: calls.append(request.url.removeprefix(console.base_url).split("?")[0])
            if "/auth/" in request.url or "/api/" in request.url else None)
    return calls


def test_the_session_warns_before_its_idle_limit_and_staying_signed_in_keeps_what_was_typed(
        open_console: Any) -> None:
    console = open_console("admin")
    page = console.page
    calls = on_a_clock(console)
    typing_in_the_add_dialog(page)
    page.clock.run_for("00:27:50")  # the session (30 minutes idle by the service's clock) has 2 min 10 s left
    assert page.evaluate(WARNING) is False
    page.clock.run_for("00:00:20")  # 1 min 50 s left: warned, with no call (a look would not be a use either)
    page.wait_for_selector("#session-dialog[open]")
    assert calls == []
    assert page.get_attribute("#session-dialog", "role") == "alertdialog"
    said = page.inner_text("#session-dialog")
    assert "Your session is about to end" in said and "in about 2 minutes" in said and "Stay signed in" in said
    assert page.evaluate(ACTIVE) == "stay-signed-in"  # announced as it takes the focus
    assert console.axe("#session-dialog") == []
    assert page.evaluate("document.getElementById('connection-dialog').open")  # the form stays as it was
    # Stay signed in: one API call, which counts as a use (moves the idle expiry), then a look at the new expiry
    page.keyboard.press("Enter")
    page.wait_for_selector("#session-dialog:not([open])", state="attached")
    assert calls == ["/api/v1/app-connections/options", "/auth/session"]
    assert page.evaluate(ACTIVE) == "field-name"  # back in the field, what was typed kept
    assert page.input_value("#field-name") == "typed-for-a-while"
    assert "TYPED-FOR-A-WHILE" in page.input_value("#field-privateKey")
    # Warned again when the new expiry comes near; left alone, the session ends as before: the form closed and wiped
    page.clock.run_for("00:28:10")
    page.wait_for_selector("#session-dialog[open]")
    page.context.clear_cookies()  # the service ends the idle session
    page.clock.run_for("00:02:00")
    page.wait_for_selector("#sign-in-again", state="attached")
    assert page.inner_text("h1") == "Your session has ended"
    assert page.evaluate(WARNING) is False
    assert page.evaluate("document.getElementById('connection-dialog').open") is False
    assert page.evaluate("document.getElementById('field-privateKey')?.value || ''") == ""


def test_a_page_in_use_looks_at_the_session_before_warning(open_console: Any) -> None:
    """A call the page made since the service described the session moved its idle expiry: at the warning's time
    the page looks again (not a use) and warns only when the answer says the end is near."""
    console = open_console("admin")
    page = console.page
    calls = on_a_clock(console)
    page.clock.run_for("00:05:00")
    page.evaluate("import('/console/assets/api.js').then(({api}) => api('GET', '/api/v1/app-connections/options'))")
    page.clock.run_for("00:23:10")  # the warning's time by the first description
    while "/auth/session" not in calls:
        page.wait_for_timeout(20)
    assert calls == ["/api/v1/app-connections/options", "/auth/session"]  # looked: nearly 30 minutes left
    page.wait_for_timeout(300)
    assert page.evaluate(WARNING) is False


def test_the_warning_before_the_absolute_limit_says_it_cannot_be_extended(open_console: Any) -> None:
    console = open_console("admin")
    page = console.page

    def at_its_absolute_end(route: Any) -> None:  # the session's last half hour of its 8 hours
        answer = route.fetch()
        body = answer.json()
        route.fulfill(response=answer, json={**body, "absoluteExpiresIn": body["expiresIn"]})

    page.route("**/auth/session", at_its_absolute_end)
    calls = on_a_clock(console)
    typing_in_the_add_dialog(page)
    page.clock.run_for("00:28:10")
    page.wait_for_selector("#session-dialog[open]")
    said = page.inner_text("#session-dialog")
    assert "cannot be extended" in said and "sign in again" in said
    assert page.locator("#stay-signed-in").count() == 0  # nothing to offer: no use moves it
    assert calls == []
    page.keyboard.press("Enter")  # OK
    page.wait_for_selector("#session-dialog:not([open])", state="attached")
    assert page.evaluate(ACTIVE) == "field-name" and page.input_value("#field-name") == "typed-for-a-while"


def test_validate_now_keeps_the_focus_on_its_button_when_the_page_is_drawn_anew(
        open_console: Any, admin: Any, secrets_used: Any, api: httpx.Client) -> None:
    entra = register_app(admin, secrets_used, name="console-a11y-validate")
    created = api.post("/api/v1/app-connections/azure-key-vault", json={
        "name": "console-a11y-validate", "method": "client-secret", "credentials": entra.client_secret_body()})
    assert created.status_code == 201, created.text
    connection = created.json()["appConnection"]
    page = open_console("operator", f"{PAGE}/azure-key-vault/{connection['id']}").page
    page.focus("#validate-now")
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:text-matches('^Validated')", state="attached", timeout=30_000)
    assert page.evaluate(ACTIVE) == "validate-now"  # not <body> (the top of the document for a screen reader)


def test_an_error_of_no_field_takes_the_focus_in_the_add_dialog(open_console: Any) -> None:
    """The submit button, disabled while the request ran, dropped the focus: the error at the top takes it."""
    page = open_console("admin").page
    page.route("**/api/v1/app-connections/azure-key-vault", lambda route: route.fulfill(
        status=502, content_type="application/problem+json",
        body=json.dumps({"title": "Bad gateway", "status": 502, "detail": "Entra ID could not be reached."}))
        if route.request.method == "POST" else route.continue_())
    page.click("#add-connection")
    page.check("#app-azure-key-vault", force=True)
    page.check("#method-client-secret", force=True)
    page.fill("#field-name", "console-a11y-general")
    page.fill("#field-tenantId", "00000000-0000-0000-0000-000000000001")
    page.fill("#field-clientId", "00000000-0000-0000-0000-000000000002")
    page.fill("#field-clientSecret", "not-a-secret")
    page.focus("#connection-submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#form-error:not([hidden])")
    assert page.evaluate(ACTIVE) == "form-error"
    page.keyboard.press("Tab")  # and on through the dialog from there
    assert page.evaluate("document.activeElement.closest('dialog')?.id") == "connection-dialog"


def test_the_header_focus_ring_has_3_to_1_against_the_header(open_console: Any) -> None:
    page = open_console("admin").page
    page.evaluate("document.activeElement.blur()")
    found = {}
    for _ in range(3):  # the skip link (drawn over the header), the brand link, Sign out
        page.keyboard.press("Tab")
        name, style, color, header = page.evaluate("""() => {const e = document.activeElement;
          const s = getComputedStyle(e);
          return [e.id || e.textContent.trim(), s.outlineStyle, s.outlineColor,
                  getComputedStyle(document.querySelector('header.top')).backgroundColor]}""")
        assert style == "solid", name
        found[name] = round(contrast(color, header), 2)
    assert len(found) == 3 and all(value >= 3 for value in found.values()), f"focus ring against the header: {found}"
    page.focus("#add-connection")  # elsewhere the ring is the usual one, on the page's background
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    color, background = page.evaluate("""[getComputedStyle(document.activeElement).outlineColor,
        getComputedStyle(document.body.parentElement).backgroundColor]""")
    assert contrast(color, background) >= 3


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    def luminance(css: str) -> float:
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
                  for c in (int(x) / 255 for x in re.findall(r"\d+", css)[:3])]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_add_dialog_fits_320_px_without_scrolling_sideways(open_console: Any) -> None:
    """At 400 % zoom: no control past the dialog's visible width (the certificate's file inputs were), and no
    sideways scroll for any app's method (a long permission name in the setup panel made one of 23 px)."""
    page = open_console("admin").page
    page.set_viewport_size({"width": 320, "height": 640})
    page.click("#add-connection")
    found = {}
    for app in ("azure-key-vault", "azure-app-configuration", "azure-client-secrets"):
        page.evaluate("(id) => document.getElementById(id).click()", f"app-{app}")  # off-screen cards: as a keyboard
        for method in ("oauth", "client-secret", "certificate", "federated"):
            page.evaluate("(id) => document.getElementById(id).click()", f"method-{method}")
            if page.locator("#field-isAutoRotationEnabled").count():
                page.check("#field-isAutoRotationEnabled")
            found[f"{app} {method}"] = page.evaluate("""() => {
              const d = document.getElementById('connection-dialog');
              const right = d.getBoundingClientRect().left + d.clientLeft + d.clientWidth;
              return {scroll: [d.scrollWidth, d.clientWidth],
                      past: [...d.querySelectorAll('input, textarea, select, button, label')]
                        .filter((e) => e.getBoundingClientRect().right > right + 0.5).map((e) => e.id || e.tagName)};
            }""")
    wide = {key: value for key, value in found.items() if value["past"] or value["scroll"][0] > value["scroll"][1]}
    assert wide == {}


def test_reduced_motion_stops_the_switch_knob_sliding(open_console: Any) -> None:
    page = open_console("admin").page
    page.emulate_media(reduced_motion="reduce")
    page.click("#add-connection")
    page.check("#app-azure-client-secrets", force=True)
    page.check("#method-client-secret", force=True)
    assert page.evaluate("getComputedStyle(document.getElementById('field-isAutoRotationEnabled'), "
                         "'::after').transitionDuration") == "0s"
