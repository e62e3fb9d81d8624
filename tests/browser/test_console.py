"""The App Connections page, as people use it in a browser: sign in, add connections of every method the options
list (client secret, certificate by file and paste, OAuth through Entra and back), errors beside their fields,
rotation and its timeline, a Reader who can change nothing, a lapsed session, delete with what it removes, and
no serious or critical accessibility violation."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localdev.environment import LocalEnvironment
from localdev.standin.pki import make_certificate
from tests.browser.conftest import PAGE, Console
from tests.e2e.entra import ROTATION_ROLE, identity_tenant, register_app, register_rotatable_app

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def admin(local_env: LocalEnvironment) -> Any:
    assert local_env.standin is not None
    return local_env.standin.admin


def add_dialog(page: Any, app: str, method: str) -> None:
    page.click("#add-connection")
    page.wait_for_selector("#connection-dialog[open]")
    page.check(f"#app-{app}", force=True)
    page.check(f"#method-{method}", force=True)


def held_create(page: Any, app: Any, name: str, secret: str) -> list[Any]:
    """The Add dialog filled in for a Key Vault client-secret connection of ``app``; its POSTs are held (the routes
    returned, in the order sent: ``continue_()`` lets one through)."""
    held: list[Any] = []
    page.route("**/api/v1/app-connections/azure-key-vault",
               lambda route: held.append(route) if route.request.method == "POST" else route.continue_())
    add_dialog(page, "azure-key-vault", "client-secret")
    page.fill("#field-name", name)
    page.fill("#field-tenantId", app.tenant_id)
    page.fill("#field-clientId", app.client_id)
    page.fill("#field-clientSecret", secret)
    return held


def live_keys(admin: Any, app: Any) -> set[str]:
    return {p["keyId"] for p in admin.app_passwords(app.tenant_id, app.client_id) if not p["revoked"]}


def new_connection(api: httpx.Client, admin: Any, secrets_used: Any, app: str, name: str) -> dict[str, Any]:
    """A client-secret connection named ``name`` of ``app``, made through the API for an app registered for it."""
    entra = register_app(admin, secrets_used, name=name)
    answer = api.post(f"/api/v1/app-connections/{app}", json={
        "name": name, "method": "client-secret", "credentials": entra.client_secret_body()})
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["appConnection"])


def open_list(console: Console) -> None:
    console.page.click(f"a[href='{PAGE}']")
    console.page.wait_for_selector("main[data-ready=true]")


def test_the_page_signs_in_and_lists_with_strict_headers(open_console: Any, host_url: str) -> None:
    console = open_console("admin", "/")
    page = console.page
    assert page.url == console.url(PAGE)
    assert page.inner_text("h1") == "App Connections"
    response = httpx.get(console.url(PAGE))
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["cache-control"] == "no-store"
    # the filters are labelled controls, and the add button opens a modal dialog that closes with Escape
    assert page.get_by_label("App", exact=True).is_visible()
    assert page.get_by_label("Status", exact=True).is_visible()
    page.click("#add-connection")
    assert page.is_visible("#connection-dialog[open]")
    page.keyboard.press("Escape")
    assert not page.is_visible("#connection-dialog[open]")
    assert page.evaluate("document.activeElement.id") == "add-connection"  # the focus goes back to the opener


def test_a_client_secret_connection_errors_beside_fields_and_the_secret_is_never_shown(
        open_console: Any, admin: Any, secrets_used: Any) -> None:
    app = register_app(admin, secrets_used, name="console-kv")
    console = open_console("admin")
    page = console.page
    add_dialog(page, "azure-key-vault", "client-secret")
    page.fill("#field-name", "Not A Slug")
    page.fill("#field-tenantId", "not-a-guid")
    page.fill("#field-clientId", app.client_id)
    page.fill("#field-clientSecret", app.client_secret)
    page.click("#connection-submit")
    page.wait_for_selector("#field-name-error:not([hidden])")
    assert "lowercase letters" in page.inner_text("#field-name-error")
    assert page.get_attribute("#field-name", "aria-invalid") == "true"
    assert "field-name-error" in (page.get_attribute("#field-name", "aria-describedby") or "")
    assert page.evaluate("document.activeElement.id") == "field-name"  # the first invalid field has the focus
    console.screenshot("add-client-secret-errors")
    page.fill("#field-name", "console-kv")
    page.click("#connection-submit")  # the credentials are checked next: the error moves to the Tenant ID
    page.wait_for_selector("#field-tenantId-error:not([hidden])")
    assert "GUID" in page.inner_text("#field-tenantId-error")
    assert page.is_hidden("#field-name-error") and page.get_attribute("#field-name", "aria-invalid") is None
    page.fill("#field-tenantId", app.tenant_id)
    page.check("#field-isAutoRotationEnabled")  # a Key ID typed, then rotation turned off: the hidden field is
    page.fill("#field-clientSecretKeyId", "nope")  # not sent (its error could not be seen)
    page.uncheck("#field-isAutoRotationEnabled")
    assert page.is_hidden("#field-clientSecretKeyId")
    page.click("#connection-submit")
    page.wait_for_selector("#connection-details")
    assert page.inner_text("h1") == "console-kv"
    assert re.search(r"/organization/app-connections/azure-key-vault/[0-9a-f-]{36}$", page.url)
    details = page.inner_text("#connection-details")
    assert "Client Secret" in details and app.client_id in details and "Active" in details
    assert app.client_secret not in page.content()
    page.click("#edit-connection")  # write-only: the edit dialog does not hold the secret
    assert page.input_value("#field-clientSecret") == ""
    page.keyboard.press("Escape")
    open_list(console)
    row = page.locator("table.connections tr", has_text="console-kv")
    assert "Azure Key Vault" in row.inner_text() and "Healthy" in row.inner_text()
    assert app.client_secret not in page.content()


def test_a_create_still_running_keeps_its_dialog_and_its_outcome_is_always_seen(
        open_console: Any, admin: Any, secrets_used: Any) -> None:
    """While "Creating…" runs, Escape and the close button do not close the dialog (the request goes on whatever
    it does): the refusal shows beside its field. A dialog closed all the same (a browser may close it on a
    second Escape) shows the outcome in the toast; both went into a wiped, closed dialog before (review S)."""
    app = register_app(admin, secrets_used, name="console-held")
    page = open_console("admin").page
    held = held_create(page, app, "console-held", "not-its-secret")
    for sent, closed_anyway in enumerate((False, True), start=1):
        page.click("#connection-submit")
        page.wait_for_function("document.getElementById('connection-submit').textContent === 'Creating…'")
        assert page.is_disabled("#connection-dialog-close")
        page.keyboard.press("Escape")
        assert page.is_disabled("#connection-dialog .actions button:has-text('Cancel')")
        assert page.is_disabled("#app-azure-app-configuration")  # no choice rebuilds the form meanwhile
        assert page.is_visible("#connection-dialog[open]")
        if closed_anyway:
            page.evaluate("document.getElementById('connection-dialog').close()")
        while len(held) < sent:  # the POST reached the route (its handler runs while Playwright waits)
            page.wait_for_timeout(20)
        held[-1].continue_()
        if closed_anyway:
            page.wait_for_selector("#toast:not([hidden])")
            assert page.inner_text("#toast span").startswith("Not saved: ")
            assert "AADSTS7000215" in page.inner_text("#toast span")
        else:
            page.wait_for_selector("#connection-dialog .field-error:not([hidden])")
            assert "AADSTS7000215" in page.inner_text("#connection-dialog")
            assert page.is_enabled("#connection-dialog-close")
            page.fill("#field-clientSecret", "not-its-secret-either")


def test_a_save_that_ends_after_its_dialog_was_closed_and_opened_anew_leaves_the_new_one_alone(
        open_console: Any, admin: Any, secrets_used: Any) -> None:
    """A create whose dialog a browser closed all the same, then opened again for another connection: when the
    first create succeeds, the toast says so and the dialog the person is filling in stays open with what they typed
    (it was closed and wiped: review V)."""
    app = register_app(admin, secrets_used, name="console-first")
    page = open_console("admin").page
    held = held_create(page, app, "console-first", app.client_secret)
    page.click("#connection-submit")
    page.wait_for_function("document.getElementById('connection-submit').textContent === 'Creating…'")
    page.evaluate("document.getElementById('connection-dialog').close()")
    add_dialog(page, "azure-key-vault", "client-secret")
    page.fill("#field-name", "typed-meanwhile")
    assert page.is_enabled("#connection-dialog-close")  # the new opening is not busy
    while not held:
        page.wait_for_timeout(20)
    held[-1].continue_()
    page.wait_for_selector("#toast:not([hidden])")
    assert page.inner_text("#toast span") == "The connection console-first was created."
    assert page.is_visible("#connection-dialog[open]") and page.input_value("#field-name") == "typed-meanwhile"


def test_a_certificate_connection_by_file_and_by_paste(open_console: Any, admin: Any, secrets_used: Any,
                                                      tmp_path: Path) -> None:
    app = register_app(admin, secrets_used, name="console-cert")
    certificate, key = make_certificate(f"cn-{app.client_id}")
    secrets_used.add(key)
    admin.add_certificate(app.tenant_id, app.client_id, certificate)
    (tmp_path / "cert.pem").write_text(certificate)
    console = open_console("operator")
    page = console.page
    add_dialog(page, "azure-app-configuration", "certificate")
    setup = page.inner_text(".setup")
    assert "on your Entra ID app registration (and grant admin consent)" in setup  # the application's own
    for permission in ("KeyValue.Delete", "KeyValue.Read", "KeyValue.Write"):
        assert permission in setup
    assert "App Configuration Data Reader" in setup  # what signing in as the application needs on the store
    # rotation makes a certificate here, and there is no client secret's Key ID to give
    assert "new certificate" in page.inner_text("#rotation-hint")
    assert page.locator("#field-clientSecretKeyId").count() == 0
    page.fill("#field-name", "console-appconfig-cert")
    page.fill("#field-tenantId", app.tenant_id)
    page.fill("#field-clientId", app.client_id)
    page.set_input_files("#field-certificateBody-file", str(tmp_path / "cert.pem"))  # read by the page itself
    page.wait_for_function("() => document.getElementById('field-certificateBody').value !== ''")
    assert page.input_value("#field-certificateBody") == certificate
    page.fill("#field-privateKey", key)
    page.click("#connection-submit")
    page.wait_for_selector("#connection-details")
    assert "Certificate" in page.inner_text("#connection-details")
    assert "BEGIN" not in page.content()  # neither the key nor the certificate comes back


def test_oauth_connects_to_azure_and_comes_back_to_the_connection(open_console: Any, host_url: str) -> None:
    console = open_console("admin")
    page = console.page
    add_dialog(page, "azure-key-vault", "oauth")
    redirect_uri = page.inner_text("#redirect-uri")
    assert redirect_uri == f"{host_url}/organization/app-connections/azure/oauth/callback"
    # One registration, the service's own (docs/oauth.md): the permissions go where the Redirect URI goes. The panel
    # said to set them on "your Entra ID app registration", then the Redirect URI on the service's: followed, the
    # service's registration lacked them and Entra refused the sign-in (AADSTS650057).
    setup = page.inner_text(".setup")
    permissions, redirect = setup.split("user_impersonation")
    assert "service's own app registration" in permissions and "your Entra ID app registration" not in setup
    assert "ahead of time" in permissions  # admin consent may be granted beforehand, not required
    assert "In that same registration, set this Redirect URI" in redirect
    console.screenshot("add-oauth")
    page.fill("#field-name", "console-kv-oauth")
    page.click("#connection-submit")  # Connect to Azure: to the stand-in's authorize endpoint and back
    page.wait_for_url(re.compile(r".*/organization/app-connections/azure-key-vault/[0-9a-f-]{36}\?authorized=created$"),
                      timeout=30_000)
    page.wait_for_selector("#connection-details")
    assert page.inner_text("h1") == "console-kv-oauth"
    assert "OAuth" in page.inner_text("#connection-details")
    first = page.url.split("?")[0]
    page.click("#reauthorize")
    page.wait_for_url(re.compile(r".*\?authorized=again$"), timeout=30_000)
    assert page.url.split("?")[0] == first
    page.wait_for_selector("#connection-details")


def test_rotation_enabled_at_creation_shows_in_the_timeline_and_delete_lists_what_it_removes(
        open_console: Any, admin: Any, secrets_used: Any) -> None:
    app = register_rotatable_app(admin, secrets_used, name="console-rotated")
    console = open_console("operator")
    page = console.page
    add_dialog(page, "azure-client-secrets", "client-secret")
    assert page.get_attribute("#field-isAutoRotationEnabled", "role") == "switch"
    assert page.is_hidden("#rotation-settings")
    page.fill("#field-name", "console-rotated")
    page.fill("#field-tenantId", app.tenant_id)
    page.fill("#field-clientId", app.client_id)
    page.fill("#field-clientSecret", app.client_secret)
    page.check("#field-isAutoRotationEnabled")
    assert "Secret ID" in page.inner_text("#field-clientSecretKeyId-hint")
    assert page.input_value("#field-timeZone") == "Europe/Berlin"  # the browser's zone by default
    page.fill("#field-clientSecretKeyId", app.key_id)
    page.fill("#field-rotationInterval", "0")
    page.fill("#field-rotateAt", "03:30")
    page.click("#connection-submit")
    page.wait_for_selector("#field-rotationInterval-error:not([hidden])")
    assert "at least 1" in page.inner_text("#field-rotationInterval-error")
    page.fill("#field-rotationInterval", "7")
    console.screenshot("add-rotation")
    page.click("#connection-submit")
    page.wait_for_selector("#rotation-timeline", timeout=30_000)
    details = page.inner_text("#connection-details")
    assert "every 7 days at 03:30 (Europe/Berlin)" in details
    first = page.inner_text("#rotation-timeline")
    assert "Succeeded" in first and f"Revoked: {app.key_id}" in first
    # Rotate now: progress on the button while it runs (the stand-in answers slowly), then a second event
    admin.set_latency(400)
    try:
        page.click("#rotate-now")
        page.wait_for_selector("#rotate-now[aria-busy=true]")
        assert page.inner_text("#rotate-now") == "Rotating…"
        page.wait_for_selector("#rotation-timeline li:nth-child(2)", timeout=30_000)
    finally:
        admin.set_latency(0)
    assert page.locator("#rotation-timeline li").count() == 2
    assert page.evaluate("document.activeElement.id") == "rotate-now"  # the page drawn anew: not on <body>
    assert "Rotate now" in page.inner_text("#rotation-timeline li:first-child")
    console.screenshot("connection-rotated")
    current = page.inner_text("#rotation-timeline li:first-child code")  # the secret now in use
    assert live_keys(admin, app) == {current}
    page.click("#delete-connection")
    page.wait_for_selector("#confirm-dialog[open]")
    assert page.inner_text("#keys-to-remove").strip() == current
    assert page.evaluate("document.activeElement.textContent") == "Cancel"
    page.click("#confirm-delete")
    page.wait_for_selector("#connections-title")
    page.wait_for_selector("main[data-ready=true]")
    assert f"was deleted. Removed from the application: {current}." in page.inner_text("#toast")
    assert live_keys(admin, app) == set()
    assert page.locator("table.connections tr", has_text="console-rotated").count() == 0


def test_a_delete_graph_refuses_offers_to_leave_them_live_and_the_toast_says_what_stays_live(
        open_console: Any, admin: Any, secrets_used: Any, api: httpx.Client) -> None:
    app = register_rotatable_app(admin, secrets_used, name="console-refused")
    answer = api.post("/api/v1/app-connections/azure-client-secrets", json={
        "name": "console-refused", "method": "client-secret",
        "credentials": app.client_secret_body(clientSecretKeyId=app.key_id), "isAutoRotationEnabled": True,
        "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}}})
    assert answer.status_code == 201, answer.text
    connection_id = answer.json()["appConnection"]["id"]
    [made] = live_keys(admin, app)  # the first rotation's secret, now in use
    admin.revoke_roles(app.tenant_id, app.client_id, [ROTATION_ROLE])  # Graph refuses from here
    console = open_console("operator")
    page = console.page
    page.wait_for_selector("table.connections")
    page.click("text=console-refused")
    page.wait_for_selector("#connection-details")
    page.click("#delete-connection")
    page.wait_for_selector("#confirm-dialog[open]")
    for _ in range(2):  # refused twice: the offer is made once (review W: each refusal added another button)
        page.click("#confirm-delete")
        page.wait_for_selector("#confirm-delete:not([aria-busy])")
        page.wait_for_selector("#delete-error:not([hidden])")
        assert page.evaluate("document.activeElement.id") == "delete-error"  # the disabled button dropped it
    assert "could not be removed" in page.inner_text("#delete-error")
    assert page.locator("text=Delete anyway and leave them live").count() == 1
    page.click("text=Delete anyway and leave them live")
    page.wait_for_selector("#connections-title")
    # Graph read the application (it refused the removal only): nothing is named as not read
    assert page.inner_text("#toast span") == (
        f"The connection console-refused was deleted. Still live on the application: {made}.")
    assert page.get_attribute("#toast", "role") == "alert"  # shown as an error: something stays live
    assert live_keys(admin, app) == {made}  # left live, as the toast says
    assert api.get(f"/api/v1/app-connections/azure-client-secrets/{connection_id}").status_code == 404


def test_a_sign_in_started_in_the_console_cannot_be_finished_in_another_browser(
        open_console: Any, host_url: str) -> None:
    """Its URL, sent to someone (who signs in to Entra), would bind their grant to the starter's connection."""
    starter = open_console("admin")
    url = starter.page.evaluate("""async () => {
        const {api} = await import('/console/assets/api.js');
        return (await api('GET', '/api/v1/app-connections/azure-key-vault/oauth/authorize?name=console-sent-link'))
            .authorizationUrl; }""")
    assert [c["name"] for c in starter.page.context.cookies() if c["name"].startswith("__Host-appconn-oauth-")]
    other = open_console("reader")  # another browser, signed in to the console as someone else
    other.page.goto(url)
    other.page.wait_for_selector("h1")
    assert other.page.inner_text("h1") == "The connection was not authorized"
    assert "started in another browser" in other.page.inner_text("main")
    listed = starter.page.evaluate("""async () => {
        const {api} = await import('/console/assets/api.js');
        return (await api('GET', '/api/v1/app-connections/azure-key-vault')).appConnections.map((c) => c.name); }""")
    assert "console-sent-link" not in listed


def test_a_reader_sees_everything_but_can_change_nothing(open_console: Any, admin: Any, secrets_used: Any,
                                                        api: httpx.Client) -> None:
    connection = new_connection(api, admin, secrets_used, "azure-key-vault", "console-read")
    console = open_console("reader")
    page = console.page
    page.wait_for_selector("table.connections")
    assert page.locator("table.connections tr", has_text="console-read").count() == 1
    assert page.locator("#add-connection").count() == 0
    page.click("text=console-read")
    page.wait_for_selector("#connection-details")
    for action in ("validate-now", "rotate-now", "edit-connection", "reauthorize", "delete-connection"):
        assert page.locator(f"#{action}").count() == 0, action
    assert "changing it needs the Writer or Rotator role" in page.inner_text("#read-only-note")
    assert page.locator("#audit-title").count() == 0  # audit records are for an Auditor
    console.screenshot("reader-connection")
    # and the API refuses a change from this session, even one crafted by hand
    status = page.evaluate("""async (path) => {
        const session = await (await fetch('/auth/session')).json();
        const answer = await fetch(path, {method: 'POST', credentials: 'same-origin',
            headers: {'X-CSRF-Token': session.csrfToken}});
        return answer.status; }""", f"/api/v1/app-connections/azure-key-vault/{connection['id']}/validate")
    assert status == 403


def test_a_lapsed_session_goes_back_to_sign_in_and_returns_to_the_same_page(
        open_console: Any, admin: Any, secrets_used: Any, api: httpx.Client) -> None:
    connection = new_connection(api, admin, secrets_used, "azure-app-configuration", "console-lapsed")
    console = open_console("admin")
    page = console.page
    page.select_option("#filter-app", "azure-app-configuration")
    assert page.url.endswith(f"{PAGE}?app=azure-app-configuration")
    logins: list[str] = []
    page.on("request", lambda request: logins.append(request.url) if "/auth/login" in request.url else None)
    # the session is gone (as when it expires): a reload goes to sign-in and back, filters kept
    page.context.clear_cookies()
    page.reload()
    page.wait_for_selector("#who-name:not(:empty)", timeout=30_000)
    page.wait_for_selector("main[data-ready=true]")
    assert "returnTo=%2Forganization%2Fapp-connections%3Fapp%3Dazure-app-configuration" in logins[-1]
    assert page.url.endswith(f"{PAGE}?app=azure-app-configuration")
    assert page.input_value("#filter-app") == "azure-app-configuration"
    # and within the page: the next API call answers 401, and the sign-in comes back to where the person went
    page.context.clear_cookies()
    page.click("text=console-lapsed")
    path = f"{PAGE}/azure-app-configuration/{connection['id']}"
    page.wait_for_url(console.url(path), timeout=30_000)
    page.wait_for_selector("#connection-details")
    assert f"returnTo={path.replace('/', '%2F')}" in logins[-1]
    assert len(logins) == 2


def test_a_tab_opened_before_the_browser_signed_in_again_acts_and_signs_out_with_the_new_session(
        open_console: Any, admin: Any, secrets_used: Any, api: httpx.Client) -> None:
    connection = new_connection(api, admin, secrets_used, "azure-app-configuration", "console-stale-tab")
    console = open_console("admin")
    page = console.page
    other = page.context.new_page()  # another tab signs in again: a new session, with a new CSRF token
    other.goto(console.url(f"/auth/login?returnTo={PAGE}"))
    other.wait_for_selector("main[data-ready=true]")
    # the first tab's change goes through with the new token (the same person's session)
    validated = page.evaluate("""async (path) => {
        const {api} = await import('/console/assets/api.js');
        return (await api('POST', path)).appConnection.id; }""",
        f"/api/v1/app-connections/azure-app-configuration/{connection['id']}/validate")
    assert validated == connection["id"]
    page.click("#sign-out")
    page.wait_for_selector("#sign-in-again")
    assert page.inner_text("h1") == "You have signed out"
    # Entra is asked which account: its own session would sign the last person in again (a shared machine)
    assert (page.get_attribute("#sign-in-again", "href") or "").endswith("&selectAccount=true")
    assert other.evaluate("fetch('/auth/session', {credentials: 'same-origin'}).then((r) => r.status)") == 401
    other.close()


def test_an_open_page_whose_session_lapsed_says_so_and_does_not_sign_in_again_by_itself(open_console: Any) -> None:
    console = open_console("admin")
    page = console.page
    page.clock.install()  # the page's timers run on a clock the test moves
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.click("#add-connection")  # the person was typing a private key, and walked away (review W)
    page.check("#app-azure-key-vault", force=True)
    page.check("#method-certificate", force=True)
    page.fill("#field-privateKey", "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----")
    page.context.clear_cookies()  # the session is gone, as when it lapses
    page.clock.run_for("09:00:00")  # past the idle and the absolute lifetime: the page asks when it should lapse
    page.wait_for_selector("#sign-in-again", state="attached")
    assert page.inner_text("h1") == "Your session has ended"
    assert [url for url in requests if "/auth/" in url] == [console.url("/auth/session")]  # no sign-in started
    assert page.is_hidden("#who")
    # The dialog is closed, and what was typed into it wiped (it stayed on the screen)
    assert page.evaluate("document.getElementById('connection-dialog').open") is False
    assert page.evaluate("document.getElementById('field-privateKey')?.value || ''") == ""


def test_a_page_whose_clock_is_minutes_fast_still_says_when_its_session_lapsed(open_console: Any) -> None:
    """The person's computer clock is 5 minutes fast. The page times its look at the session by the seconds the
    service says are left, not by ``expiresAt`` against its own clock (then it asked 5 minutes early, heard the
    session was live, and never asked again)."""
    console = open_console("admin")
    page = console.page
    page.clock.install(time=time.time() + 5 * 60)
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    looks: list[str] = []
    page.on("request", lambda request: looks.append(request.url) if "/auth/session" in request.url else None)
    # Its clock says the session (30 minutes idle) lapsed 2 minutes ago; by the service's it has 3 minutes left, and
    # the page looks when 2 are (the warning's time).
    page.clock.run_for("00:27:00")
    assert looks == []
    page.context.clear_cookies()  # the session lapses at the service
    page.clock.run_for("00:01:10")
    page.wait_for_selector("#sign-in-again", state="attached", timeout=5_000)
    assert page.inner_text("h1") == "Your session has ended"
    assert looks == [console.url("/auth/session")]


def test_no_serious_or_critical_accessibility_violation(open_console: Any, admin: Any, secrets_used: Any,
                                                        api: httpx.Client) -> None:
    app = register_rotatable_app(admin, secrets_used, name="console-a11y")
    created = api.post("/api/v1/app-connections/azure-client-secrets", json={
        "name": "console-a11y", "method": "client-secret", "credentials": app.client_secret_body(),
        "isAutoRotationEnabled": True,
        "rotation": {"rotationInterval": 30, "rotateAt": "02:00", "timeZone": "UTC"}})
    assert created.status_code == 201, created.text
    connection = created.json()["appConnection"]
    console = open_console("admin")
    page = console.page
    page.wait_for_selector("table.connections")
    assert console.axe() == []
    console.screenshot("list")
    page.screenshot(path=str(ROOT / ".localdev" / "screenshots" / "console.png"))
    add_dialog(page, "azure-client-secrets", "client-secret")
    page.check("#field-isAutoRotationEnabled")
    assert console.axe("#connection-dialog") == []
    console.screenshot("add-dialog")
    page.keyboard.press("Escape")
    page.goto(console.url(f"{PAGE}/azure-client-secrets/{connection['id']}"))
    page.wait_for_selector("#rotation-timeline")
    assert "connection.create" in page.inner_text("#audit-table")  # an Auditor (here Admin) reads the records
    assert console.axe() == []
    console.screenshot("connection")


def test_adding_a_connection_with_the_keyboard_alone(open_console: Any, admin: Any, secrets_used: Any) -> None:
    app = register_app(admin, secrets_used, name="console-keys")
    console = open_console("operator")
    page = console.page
    page.focus("#add-connection")
    page.keyboard.press("Enter")
    page.wait_for_selector("#connection-dialog[open]")
    assert page.evaluate("document.activeElement.name") == "app"  # the first choice has the focus
    page.keyboard.press("ArrowRight")  # Azure App Configuration
    page.keyboard.press("Tab")  # to the methods
    page.keyboard.press("ArrowRight")  # Client Secret
    assert page.evaluate("document.activeElement.id") == "method-client-secret"
    outline = page.evaluate("getComputedStyle(document.activeElement.nextElementSibling).outlineStyle")
    assert outline == "solid"  # the focus is visible on the chosen card
    page.keyboard.press("Tab")  # past the copy of the docs' setup, to the fields
    for value in ("console-keys", None, app.tenant_id, app.client_id, app.client_secret):
        while page.evaluate("document.activeElement.tagName") not in ("INPUT", "TEXTAREA"):
            page.keyboard.press("Tab")
        if value is not None:
            page.keyboard.type(value)
        page.keyboard.press("Tab")
    assert page.input_value("#field-clientSecret") == app.client_secret
    page.focus("#connection-submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#connection-details")
    assert page.inner_text("h1") == "console-keys"
    assert page.evaluate("document.activeElement.id") == "page-title"  # the new page's heading has the focus


def test_a_person_picks_a_demo_account_at_the_stand_in_as_the_local_run_prints(
        browser: Any, host_url: str, admin: Any) -> None:
    admin.set_account_picker(True)
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(f"{host_url}/")
        page.wait_for_selector("text=Pick an account", timeout=30_000)
        page.click("text=Sign in as Demo Reader")
        page.wait_for_selector("main[data-ready=true]", timeout=30_000)
        assert page.url == f"{host_url}{PAGE}"
        assert page.inner_text("#who-name") == "Demo Reader"
        assert page.locator("#add-connection").count() == 0
        page.click("#sign-out")  # signed out: a page that says so, not an automatic sign-in again
        page.wait_for_selector("text=You have signed out", timeout=30_000)
        assert page.locator("#who").is_hidden()
        assert page.url.startswith(f"{host_url}{PAGE}")
        page.click("#sign-in-again")  # when the person chooses to, and the next visit asks again
        page.wait_for_selector("text=Pick an account", timeout=30_000)
    finally:
        admin.set_account_picker(False)
        context.close()


def test_edit_changes_only_what_changed_and_turns_rotation_on(open_console: Any, admin: Any, secrets_used: Any,
                                                              api: httpx.Client) -> None:
    """Reference azure-client-secrets-connection.md, "Enable Automatic Credential Rotation": when creating or editing
    the connection, turn rotation on and enter the Key ID into the Client Secret Key ID field. Editing, the field took
    the Key ID and dropped it unless a new secret was typed too: where two of the application's secrets share a hint
    (their first three characters), the service could not tell which to revoke, and rotation could not be turned on.
    The Key ID goes alone now (nothing secret is sent again)."""
    app = register_rotatable_app(admin, secrets_used, name="console-edit")
    twin = admin.add_secret(app.tenant_id, app.client_id, secret_text=app.client_secret[:3] + "twin-" + "x" * 30)
    secrets_used.add(twin["secretText"])
    created = api.post("/api/v1/app-connections/azure-client-secrets", json={
        "name": "console-edit", "method": "client-secret", "credentials": app.client_secret_body()})
    assert created.status_code == 201, created.text
    connection = created.json()["appConnection"]
    console = open_console("operator", f"{PAGE}/azure-client-secrets/{connection['id']}")
    page = console.page
    patches: list[Any] = []
    page.on("request", lambda request: patches.append(request.post_data_json) if request.method == "PATCH" else None)
    page.click("#edit-connection")
    page.wait_for_selector("#connection-dialog[open]")
    assert page.input_value("#field-name") == "console-edit" and page.input_value("#field-clientSecret") == ""
    page.fill("#field-description", "Graph access of the build pipeline")
    page.check("#field-isAutoRotationEnabled")
    page.fill("#field-rotationInterval", "14")
    page.fill("#field-rotateAt", "22:15")
    page.select_option("#field-timeZone", "UTC")
    assert "the connection uses" in page.inner_text("#field-clientSecretKeyId-hint")
    page.fill("#field-clientSecretKeyId", app.key_id)  # the stored secret's: sent alone, without the secret
    page.click("#connection-submit")
    page.wait_for_selector("#rotation-timeline", timeout=30_000)
    assert patches == [{"description": "Graph access of the build pipeline", "isAutoRotationEnabled": True,
                        "rotation": {"rotationInterval": 14, "rotateAt": "22:15", "timeZone": "UTC"},
                        "credentials": {"clientSecretKeyId": app.key_id}}]
    assert app.key_id not in live_keys(admin, app) and twin["keyId"] in live_keys(admin, app)  # that one went
    details = page.inner_text("#connection-details")
    assert "Graph access of the build pipeline" in details and "every 14 days at 22:15 (UTC)" in details
    assert "First rotation (rotation turned on)" in page.inner_text("#rotation-timeline")


def trust(admin: Any, local_env: LocalEnvironment, app: Any) -> None:
    """The owner adds the federated credential the form shows (as in the portal)."""
    assert local_env.federation is not None
    admin.add_federated_credential(app.tenant_id, app.client_id, "console-by-the-owner", local_env.federation.issuer,
                                   local_env.federation.principal_id)


def test_a_federated_connection_shows_the_credential_to_add_and_is_created_with_nothing_secret(
        open_console: Any, admin: Any, secrets_used: Any, local_env: LocalEnvironment) -> None:
    assert local_env.federation is not None
    app = register_app(admin, secrets_used, identity_tenant(local_env), name="console-federated")
    console = open_console("admin")
    page = console.page
    add_dialog(page, "azure-key-vault", "federated")
    # the exact federated credential to add, each part with its Copy button, and the limits
    assert page.inner_text("#federated-issuer") == local_env.federation.issuer
    assert page.inner_text("#federated-subject") == local_env.federation.principal_id
    assert page.inner_text("#federated-audience") == "api://AzureADTokenExchange"
    for label in ("Issuer", "Subject", "Audience"):
        assert page.locator(".setup button", has_text=f"Copy {label}").count() == 1
    assert "federated identity credentials" in page.inner_text("#federated-limits")
    # Tenant ID and Client ID only: nothing secret, nothing to rotate
    fields = page.eval_on_selector_all("#connection-form-body .details [data-field]",
                                       "nodes => nodes.map(n => n.dataset.field)")
    assert fields == ["name", "description", "tenantId", "clientId"]
    assert page.locator("#field-isAutoRotationEnabled").count() == 0
    page.fill("#field-name", "console-federated")
    page.fill("#field-tenantId", app.tenant_id)
    page.fill("#field-clientId", app.client_id)
    # before the owner trusts the identity, Entra refuses: the code and the credential to add are shown
    page.click("#connection-submit")
    page.wait_for_selector("#expected-credential", timeout=30_000)
    assert "AADSTS70021" in page.inner_text("#field-clientId-error")
    assert page.get_attribute("#field-clientId", "aria-invalid") == "true"
    assert page.inner_text("#expected-issuer") == local_env.federation.issuer
    assert page.inner_text("#expected-subject") == local_env.federation.principal_id
    assert page.inner_text("#expected-audience") == "api://AzureADTokenExchange"
    console.screenshot("add-federated-untrusted")
    trust(admin, local_env, app)
    page.click("#connection-submit")
    page.wait_for_selector("#connection-details", timeout=30_000)
    assert page.inner_text("h1") == "console-federated"
    details = page.inner_text("#connection-details")
    assert "Federated" in details and app.client_id in details and "Active" in details and "Not needed" in details
    for action in ("rotate-now", "move-to-federated"):
        assert page.locator(f"#{action}").count() == 0, action
    page.click("#edit-connection")  # the edit dialog has no rotation switch and no secret field either
    page.wait_for_selector("#connection-dialog[open]")
    assert page.locator("#field-isAutoRotationEnabled").count() == 0
    assert page.locator("#field-clientSecret").count() == 0
    page.keyboard.press("Escape")


def test_a_federated_connection_to_an_application_of_another_tenant_says_where_it_must_be_registered(
        open_console: Any, admin: Any, secrets_used: Any, local_env: LocalEnvironment) -> None:
    """Entra refuses the identity for an application of another tenant however it trusts it (AADSTS700236): the
    form says the application must be registered in the identity's tenant, and shows no credential to add."""
    app = register_app(admin, secrets_used, admin.add_tenant(), name="console-elsewhere")
    trust(admin, local_env, app)
    console = open_console("admin")
    page = console.page
    add_dialog(page, "azure-key-vault", "federated")
    page.fill("#field-name", "console-elsewhere")
    page.fill("#field-tenantId", app.tenant_id)
    page.fill("#field-clientId", app.client_id)
    page.click("#connection-submit")
    page.wait_for_selector("#field-clientId-error:not([hidden])", timeout=30_000)
    beside = page.inner_text("#field-clientId-error")
    assert "registered in another tenant than the service's identity (AADSTS700236)" in beside, beside
    assert "add the federated credential" not in beside
    assert identity_tenant(local_env) in page.inner_text("#form-error")
    assert page.locator("#expected-credential").count() == 0
    assert page.get_attribute("#field-clientId", "aria-invalid") == "true"
    console.screenshot("add-federated-other-tenant")
    page.keyboard.press("Escape")


def _client_secret_connection_page(name: str, open_console: Any, admin: Any, secrets_used: Any,
                                   local_env: LocalEnvironment, api: httpx.Client) -> tuple[Any, dict[str, Any], Any]:
    """A client-secret connection of an application in the identity's tenant (one that may move to federated),
    created through the API, and its page opened by an operator: the application, the connection, the console."""
    app = register_rotatable_app(admin, secrets_used, name=name, tenant_id=identity_tenant(local_env))
    created = api.post("/api/v1/app-connections/azure-key-vault", json={
        "name": name, "method": "client-secret", "credentials": app.client_secret_body()})
    assert created.status_code == 201, created.text
    connection: dict[str, Any] = created.json()["appConnection"]
    return app, connection, open_console("operator", f"{PAGE}/azure-key-vault/{connection['id']}")


def test_a_client_secret_connection_moves_to_federated_through_the_page(
        open_console: Any, admin: Any, secrets_used: Any, local_env: LocalEnvironment, api: httpx.Client) -> None:
    assert local_env.federation is not None
    app, connection, console = _client_secret_connection_page(
        "console-migrate", open_console, admin, secrets_used, local_env, api)
    page = console.page
    assert "Client Secret" in page.inner_text("#connection-details")
    posts: list[Any] = []
    page.on("request", lambda request: posts.append((request.url, request.post_data_json))
            if request.method == "POST" and "migrate-to-federated" in request.url else None)
    page.click("#move-to-federated")
    page.wait_for_selector("#confirm-dialog[open]")
    steps = page.inner_text("#migrate-steps")
    assert "adds the federated credential" in steps and "tests" in steps and "switches" in steps
    assert page.get_by_label("Also revoke the credential I gave").is_visible()
    assert "the client secret you entered stays valid" in page.inner_text("#revoke-original-hint")
    assert not page.is_checked("#revoke-original")
    assert console.axe("#confirm-dialog") == []
    page.check("#revoke-original")
    admin.set_latency(300)  # the stand-in answers slowly: the progress shows while the service works
    try:
        page.click("#confirm-migrate")
        page.wait_for_selector("#confirm-migrate[aria-busy=true]")
        assert page.is_visible("#migrate-progress")
        page.wait_for_selector("#confirm-dialog[open]", state="detached", timeout=60_000)
    finally:
        admin.set_latency(0)
    assert posts == [(console.url(f"/api/v1/app-connections/azure-key-vault/{connection['id']}/migrate-to-federated"),
                      {"revokeOriginal": True})]
    page.wait_for_selector("#connection-details")
    assert page.evaluate("document.activeElement.id") == "page-title"  # its opener, Move to federated, is gone
    details = page.inner_text("#connection-details")
    assert "Federated" in details and "Client Secret" not in details
    assert "now signs in with the federated credential" in page.inner_text("#toast")
    assert "was revoked" in page.inner_text("#toast")
    assert "Move to federated" in page.inner_text("#rotation-timeline")
    for action in ("rotate-now", "move-to-federated"):
        assert page.locator(f"#{action}").count() == 0, action
    [credential] = admin.federated_credentials(app.tenant_id, app.client_id)
    assert credential["subject"] == local_env.federation.principal_id
    assert live_keys(admin, app) == set()  # the secret given was revoked, as asked
    console.screenshot("connection-moved-to-federated")


def test_a_move_the_request_had_to_answer_before_it_ended_is_told_as_going_on(
        open_console: Any, admin: Any, secrets_used: Any, local_env: LocalEnvironment, api: httpx.Client) -> None:
    """A 202 (the federated sign-in still being tested when the request had to be answered: the rotation sweep
    finishes the move) is not a finished move: the page says it goes on, and the connection is as it was."""
    _, connection, console = _client_secret_connection_page(
        "console-migrate-202", open_console, admin, secrets_used, local_env, api)
    page = console.page
    detail = ("The federated sign-in did not work yet when the request had to be answered (AADSTS70021); the rotation "
              "sweep goes on testing it and finishes the migration. The connection still signs in with its "
              "client-secret credential.")

    def handed_to_the_sweep(route: Any) -> None:  # the service's 202: the connection as it is, and the detail
        route.fulfill(status=202, json={"appConnection": connection, "detail": detail},
                      headers={"Retry-After": "300"})

    page.route("**/migrate-to-federated", handed_to_the_sweep)
    page.click("#move-to-federated")
    page.wait_for_selector("#confirm-dialog[open]")
    page.click("#confirm-migrate")
    page.wait_for_selector("#confirm-dialog[open]", state="detached")
    page.wait_for_selector("#toast:not([hidden])")
    told = page.inner_text("#toast span")
    assert "goes on in the background" in told and detail in told
    assert "now signs in with the federated credential" not in told
    assert page.evaluate("document.activeElement.id") == "move-to-federated"  # the page drawn anew: on its button
    assert "Client Secret" in page.inner_text("#connection-details")


def test_the_form_with_federated_chosen_has_no_serious_or_critical_accessibility_violation(
        open_console: Any) -> None:
    console = open_console("admin")
    page = console.page
    add_dialog(page, "azure-client-secrets", "federated")
    page.wait_for_selector("#federated-credential")
    assert console.axe("#connection-dialog") == []
    console.screenshot("add-federated")


def test_a_method_the_options_list_as_unavailable_is_disabled_with_its_reason(open_console: Any) -> None:
    console = open_console("admin")
    page = console.page
    reason = "The service has no managed identity for federation: set FEDERATION_IDENTITY_CLIENT_ID."

    def without_federation(route: Any) -> None:  # the options of a service without the FEDERATION_* settings
        answer = route.fetch()
        options = answer.json()
        for option in options["appConnectionOptions"]:
            option["unavailableMethods"] = {"federated": reason}
            option["federated"].update(available=False, reason=reason, federatedCredential=None)
        route.fulfill(response=answer, json=options)

    page.route("**/api/v1/app-connections/options", without_federation)
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    page.click("#add-connection")
    page.wait_for_selector("#connection-dialog[open]")
    page.check("#app-azure-key-vault", force=True)
    assert page.is_disabled("#method-federated")
    assert page.inner_text("#method-federated-reason") == f"Federated: {reason}"
    assert page.get_attribute("#method-federated", "aria-describedby") == "method-federated-reason"
    assert page.is_enabled("#method-client-secret")
    assert console.axe("#connection-dialog") == []


def test_a_list_longer_than_the_page_follows_says_it_shows_only_the_first_connections(open_console: Any) -> None:
    """(Review F.) The list follows 20 pages per app and stopped there silently: a count that looked complete."""
    console = open_console("admin")
    page = console.page
    pages = []

    def endless(route: Any) -> None:  # every page of azure-key-vault's list (its first, again) says there is another
        answer = route.fetch(url=route.request.url.split("?", 1)[0])
        listing = answer.json()
        pages.append(route.request.url)
        listing["continuationToken"] = "another-page"
        route.fulfill(response=answer, json=listing)

    page.route("**/api/v1/app-connections/azure-key-vault*", endless)
    page.reload()
    page.wait_for_selector("main[data-ready=true]")
    page.wait_for_selector("#connection-count")
    assert len(pages) == 20  # bounded
    assert "listed connections" in page.inner_text("#connection-count")
    assert "only its first" in page.inner_text("main")


# -- what a role is offered is what the server allows (review W, session 18) ------------------------------------
def test_a_writer_without_the_rotator_role_is_not_offered_rotation_when_adding(open_console: Any) -> None:
    page = open_console("writer").page
    page.click("#add-connection")
    page.check("#app-azure-key-vault", force=True)
    page.check("#method-client-secret", force=True)
    page.wait_for_selector("#field-clientSecret")
    assert page.locator("#field-isAutoRotationEnabled").count() == 0  # the server would refuse it (403)


def test_a_rotator_alone_edits_the_rotation_only_and_sends_nothing_else(
        open_console: Any, admin: Any, secrets_used: Any, api: httpx.Client) -> None:
    app = register_rotatable_app(admin, secrets_used, name="console-rotator")
    created = api.post("/api/v1/app-connections/azure-client-secrets", json={
        "name": "console-rotator", "description": "Build pipeline ", "method": "client-secret",
        "credentials": app.client_secret_body()})
    assert created.status_code == 201, created.text
    connection = created.json()["appConnection"]
    page = open_console("rotator", f"{PAGE}/azure-client-secrets/{connection['id']}").page
    sent: list[Any] = []
    page.on("request", lambda request: sent.append(request.post_data_json) if request.method == "PATCH" else None)
    assert page.locator("#rotate-now").count() == 0  # rotation is off: the server would refuse it (400)
    page.click("#edit-connection")
    page.wait_for_selector("#connection-dialog[open]")
    for field in ("name", "description", "clientSecret"):  # shown, not edited: that needs the Writer role
        assert page.is_disabled(f"#field-{field}"), field
    page.check("#field-isAutoRotationEnabled")
    page.fill("#field-rotationInterval", "30")
    # No Key ID field: which secret the connection holds is a statement about its credentials (Writer)
    assert page.locator("#field-clientSecretKeyId").count() == 0
    page.click("#connection-submit")
    page.wait_for_selector("#rotation-timeline", timeout=30_000)
    # The description, with a space at its end, did not change: it was not sent (it needs the Writer role)
    assert len(sent) == 1 and set(sent[0]) == {"isAutoRotationEnabled", "rotation"}, sent
    assert page.locator("#rotate-now").count() == 1  # on now
