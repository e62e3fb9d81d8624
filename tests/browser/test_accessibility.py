"""The console for a keyboard, screen-reader or zoomed-in user (WCAG 2.2 AA, review of accessibility): a warning
before the session ends, with a way to stay signed in that keeps what was typed (2.2.1); the focus kept where the
person was when the page is drawn anew or an action fails (2.4.3); a focus ring seen on the header's blue (1.4.11,
2.4.7); the Add dialog at 320 px without sideways scrolling (1.4.10); no motion with reduced motion asked (2.3.3)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PAGE, Person
from tests.e2e.entra import register_app

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ACTIVE = ("document.activeElement === document.body ? 'BODY' : "
          "(document.activeElement.id || document.activeElement.tagName)")
WARNING = "document.getElementById('session-dialog').open"
# What the service says is left of the session (a look: not a use).
LEFT = "fetch('/auth/session', {cache: 'no-store'}).then((r) => r.json()).then((s) => s.expiresIn)"


def typing_in_the_add_dialog(page: Any) -> None:
    """The person is filling the Add dialog (slowly: typing is not a use of the session)."""
    page.click("#add-connection")
    page.check("#app-azure-key-vault", force=True)
    page.check("#method-certificate", force=True)
    page.fill("#field-privateKey", "-----BEGIN PRIVATE KEY-----\nTYPED-FOR-A-WHILE\n-----END PRIVATE KEY-----")
    page.fill("#field-name", "typed-for-a-while")


def on_a_clock(console: Any) -> list[str]:
    """The page's timers on a clock the test moves (the service's runs on: by it the session stays fresh); the
    session calls (``/auth/...``) and API calls the page makes from here, as ``METHOD /path``."""
    page = console.page
    page.clock.install()
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    calls: list[str] = []
    page.on("request", lambda request: calls.append(
        f"{request.method} {request.url.removeprefix(console.base_url).split('?')[0]}")
        if "/auth/" in request.url or "/api/" in request.url else None)
    return calls


def looked(page: Any, calls: list[str]) -> None:
    """Wait (a few seconds at most: the page's clock flows meanwhile, a later timer must not answer for it) for the
    page's look at ``/auth/session``, and for what it does with the answer."""
    for _ in range(250):
        if "GET /auth/session" in calls:
            break
        page.wait_for_timeout(20)
    page.wait_for_timeout(300)


def session_row(console: Any, local_env: Any, **values: Any) -> None:
    """Set the service's record of the console's session in Azurite (its real clock, not the page's):
    ``LastSeenAt`` (the last use it noted), ``ExpiresAt`` (the absolute expiry)."""
    from azure.data.tables import TableServiceClient

    cookie = next(c["value"] for c in console.page.context.cookies() if c["name"] == "__Host-appconn")
    table = TableServiceClient.from_connection_string(local_env.settings["AzureWebJobsStorage"]).get_table_client(
        local_env.table_prefix + "Sessions")
    table.update_entity({"PartitionKey": "s" + cookie.split(".", 1)[0],
                         "RowKey": hashlib.sha256(cookie.encode()).hexdigest(), **values})


def last_used(console: Any, local_env: Any, ago: timedelta) -> None:
    """The session's last use, as the service noted it, ``ago`` (by its real clock)."""
    session_row(console, local_env, LastSeenAt=datetime.now(UTC) - ago)


def test_the_session_warns_before_its_idle_limit_and_staying_signed_in_keeps_what_was_typed(
        open_console: Any, local_env: Any) -> None:
    console = open_console("admin")
    page = console.page
    calls = on_a_clock(console)
    typing_in_the_add_dialog(page)
    last_used(console, local_env, timedelta(minutes=28, seconds=10))  # the service: 1 min 50 s left
    page.clock.run_for("00:27:00")
    assert page.evaluate(WARNING) is False and calls == []
    # 2 minutes before the end by the page's description: it looks (not a use), and the answer warns
    page.clock.run_for("00:01:10")
    page.wait_for_selector("#session-dialog[open]")
    assert calls == ["GET /auth/session"]
    assert page.get_attribute("#session-dialog", "role") == "alertdialog"
    said = page.inner_text("#session-dialog")
    assert "Your session is about to end" in said and "in about 2 minutes" in said and "Stay signed in" in said
    assert page.evaluate(ACTIVE) == "stay-signed-in"  # announced as it takes the focus
    assert console.axe("#session-dialog") == []
    assert page.evaluate("document.getElementById('connection-dialog').open")  # the form stays as it was
    # Stay signed in: POST /auth/session, a use the service notes at once; its answer closes the warning
    page.keyboard.press("Enter")
    page.wait_for_selector("#session-dialog:not([open])", state="attached")
    assert calls == ["GET /auth/session", "POST /auth/session"]
    assert page.evaluate(LEFT) > 29 * 60
    assert page.evaluate(ACTIVE) == "field-name"  # back in the field, what was typed kept
    assert page.input_value("#field-name") == "typed-for-a-while"
    assert "TYPED-FOR-A-WHILE" in page.input_value("#field-privateKey")
    # Warned again when the new expiry comes near; left alone, the session ends as before: the form closed and wiped
    last_used(console, local_env, timedelta(minutes=28, seconds=10))
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
    while "GET /auth/session" not in calls:
        page.wait_for_timeout(20)
    assert calls == ["GET /api/v1/app-connections/options", "GET /auth/session"]  # looked: nearly 30 minutes left
    page.wait_for_timeout(300)
    assert page.evaluate(WARNING) is False


def test_a_page_opened_after_a_pause_warns_by_the_expiry_its_own_first_call_moved(
        open_console: Any, local_env: Any) -> None:
    """Opened 25 minutes after the last use: ``/auth/session`` (not a use) says 5 minutes are left, then the page's
    own first API call (a use, noted: the last was over a minute before) moves the idle expiry to 30 minutes. At
    the warning's time by the first answer the page looks, and does not warn of an end 25 minutes away."""
    console = open_console("admin")
    page = console.page
    last_used(console, local_env, timedelta(minutes=25))
    calls = on_a_clock(console)
    assert page.evaluate(LEFT) > 29 * 60  # the service: ~30 minutes left, by the load's use
    calls.clear()
    page.clock.run_for("00:03:10")  # 'ends in about 2 minutes' by the first description
    looked(page, calls)
    assert calls == ["GET /auth/session"] and page.evaluate(WARNING) is False


def test_a_tab_left_alone_while_another_tab_is_in_use_does_not_warn(open_console: Any, local_env: Any) -> None:
    """The person works in a second tab, whose calls move the idle expiry; the first tab, left alone, looks when its
    warning is due and does not warn."""
    console = open_console("admin")
    page = console.page
    calls = on_a_clock(console)
    last_used(console, local_env, timedelta(minutes=25))
    other = page.context.new_page()
    other.goto(console.url(PAGE))
    other.wait_for_selector("main[data-ready=true]")  # a use, noted just now
    assert other.evaluate(LEFT) > 29 * 60
    page.clock.run_for("00:28:10")  # the first tab's description: 1 min 50 s left
    looked(page, calls)
    assert page.evaluate(WARNING) is False, f"a false warning (the page's calls: {calls})"
    other.close()


def test_a_page_that_wakes_past_the_end_of_its_session_wipes_what_was_typed_at_once(open_console: Any) -> None:
    """The computer slept past the session's end: the pending timer (the warning's) fires late. The page looks
    first: the session has ended, so the form is closed and what was typed (a private key) wiped, with no warning
    offering to stay signed in."""
    console = open_console("admin")
    page = console.page
    calls = on_a_clock(console)
    typing_in_the_add_dialog(page)
    page.context.clear_cookies()  # the service ended the idle session while the machine slept
    page.clock.fast_forward("00:31:00")  # woken: due timers fire once
    page.wait_for_selector("#sign-in-again", state="attached")
    assert calls == ["GET /auth/session"]
    assert page.inner_text("h1") == "Your session has ended"
    assert page.evaluate(WARNING) is False
    assert page.evaluate("document.getElementById('connection-dialog').open") is False
    assert page.evaluate("document.getElementById('field-privateKey')?.value || ''") == ""


def test_staying_signed_in_needs_no_role_and_records_no_refusal(
        open_console: Any, people: dict[str, Person], local_env: Any, api: httpx.Client) -> None:
    """An Auditor (no Reader role: allowed to sign in and to read audit records) chooses Stay signed in: it is a
    use of the session any signed-in person may make, not an API call refused for want of Reader and recorded as
    ``access.refused`` as a probe would be."""
    admin, tenant = local_env.standin.admin, local_env.api.tenant_id
    upn = f"console-auditor-{secrets.token_hex(3)}@contoso.example"
    user = admin.add_user(tenant, upn, "Console Auditor")
    admin.assign_role(tenant, local_env.api.api_app_id, user["id"], "AppConnections.Auditor")
    people["auditor"] = Person("auditor", user["id"], upn, "Console Auditor")
    console = open_console("auditor")
    page = console.page

    def refusals() -> list[str]:
        records = api.get("/api/v1/audit-logs", params={"actor": user["id"], "action": "access.refused"})
        assert records.status_code == 200, records.text
        return [r["detail"] for r in records.json()["auditLogs"]]

    calls = on_a_clock(console)
    before = refusals()
    last_used(console, local_env, timedelta(minutes=28, seconds=10))
    page.clock.run_for("00:28:10")
    page.wait_for_selector("#session-dialog[open]")
    page.keyboard.press("Enter")  # Stay signed in
    page.wait_for_selector("#session-dialog:not([open])", state="attached")
    assert calls == ["GET /auth/session", "POST /auth/session"]
    assert page.evaluate(LEFT) > 29 * 60
    after = refusals()
    assert after == before, f"Stay signed in recorded a refusal: {after[: len(after) - len(before)]}"


def test_the_warning_before_the_absolute_limit_says_it_cannot_be_extended(
        open_console: Any, local_env: Any) -> None:
    """The absolute expiry, which no use extends, comes within two minutes of the idle one: staying signed in would
    gain nothing (it would be warned again at once), so the warning says the session cannot be extended."""
    console = open_console("admin")
    page = console.page
    calls = on_a_clock(console)
    typing_in_the_add_dialog(page)
    last_used(console, local_env, timedelta(minutes=28, seconds=10))  # the idle expiry in 1 min 50 s
    session_row(console, local_env, ExpiresAt=datetime.now(UTC) + timedelta(minutes=3))  # the absolute in 3 min
    page.clock.run_for("00:28:10")
    page.wait_for_selector("#session-dialog[open]")
    said = page.inner_text("#session-dialog")
    assert "cannot be extended" in said and "sign in again" in said
    assert page.locator("#stay-signed-in").count() == 0  # nothing to offer: no use moves it
    assert calls == ["GET /auth/session"]
    page.keyboard.press("Enter")  # OK
    page.wait_for_selector("#session-dialog:not([open])", state="attached")
    assert page.evaluate(ACTIVE) == "field-name" and page.input_value("#field-name") == "typed-for-a-while"


def test_the_warning_drawn_anew_while_open_keeps_the_focus_in_it_and_says_what_changed(open_console: Any) -> None:
    """Stay signed in is answered with the session's end still within two minutes (the absolute expiry): the open
    warning is drawn anew as 'cannot be extended', its actions replaced. The focus goes to its OK (not to <body>),
    and its live region says the new words."""
    console = open_console("admin")
    page = console.page
    answers = iter([{"expiresIn": 60, "absoluteExpiresIn": 1000}, {"expiresIn": 95, "absoluteExpiresIn": 95}])

    def near_the_absolute_end(route: Any) -> None:
        answer = route.fetch()
        route.fulfill(response=answer, json={**answer.json(), **next(answers, {})})

    page.route("**/auth/session", near_the_absolute_end)
    on_a_clock(console)
    page.wait_for_selector("#session-dialog[open]")
    assert page.evaluate(ACTIVE) == "stay-signed-in"
    page.keyboard.press("Enter")
    page.wait_for_selector("#session-dialog-ok")
    assert "cannot be extended" in page.inner_text("#session-dialog-text")
    assert page.evaluate(ACTIVE) == "session-dialog-ok", f"the focus went to {page.evaluate(ACTIVE)}"
    page.wait_for_selector("#session-dialog-news:has-text('cannot be extended')", state="attached")  # said
    assert page.get_attribute("#session-dialog-news", "role") == "alert"
    assert console.axe("#session-dialog") == []


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
