"""The console in a real browser: Playwright driving Debian's Chromium (``/usr/bin/chromium``, installed by
``scripts/install.sh``) against the local host, Azurite and the stand-in of the end-to-end tests.

Each person signs in as a browser would: the page finds no session, goes to ``/auth/login``, the stand-in's authorize
endpoint signs in the user the test chose (``set_sign_in``), ``/auth/callback`` sets the session cookie and the
browser lands back on the page. Every page is watched for Content-Security-Policy violations and script errors;
screenshots go to ``.localdev/screenshots/`` (gitignored)."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localdev.environment import LocalEnvironment

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".localdev" / "screenshots"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE = "/organization/app-connections"
ROLES = {
    "admin": ("AppConnections.Admin",),
    "operator": ("AppConnections.Writer", "AppConnections.Rotator", "AppConnections.Reader"),
    "reader": ("AppConnections.Reader",),
    "writer": ("AppConnections.Writer", "AppConnections.Reader"),
    "rotator": ("AppConnections.Rotator", "AppConnections.Reader"),
}


@dataclass(frozen=True)
class Person:
    key: str
    user_id: str
    upn: str
    name: str


@dataclass
class Console:
    """One person's browser tab on the console, and what went wrong in it."""

    page: Any
    base_url: str
    person: Person
    problems: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def axe(self, context: str = "document") -> list[dict[str, Any]]:
        """The serious and critical violations axe-core finds (it runs through the DevTools protocol, as the
        page's policy forbids any script but its own)."""
        page = self.page
        if not page.evaluate("() => typeof window.axe === 'object'"):
            page.evaluate(AXE.read_text())
        result = page.evaluate(
            "async (selector) => (await axe.run(selector === 'document' ? document : document.querySelector(selector),"
            " {resultTypes: ['violations']})).violations", context)
        return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                 "nodes": [node["target"] for node in v["nodes"]][:5]}
                for v in result if v["impact"] in ("serious", "critical")]


@pytest.fixture(scope="session")
def people(local_env: LocalEnvironment) -> dict[str, Person]:
    """The console's users for these tests, each with the app roles of ``ROLES``."""
    assert local_env.standin is not None and local_env.api is not None
    admin = local_env.standin.admin
    tenant, api = local_env.api.tenant_id, local_env.api.api_app_id
    found = {}
    for key, roles in ROLES.items():
        upn = f"console-{key}-{secrets.token_hex(3)}@contoso.example"
        user = admin.add_user(tenant, upn, f"Console {key.title()}")
        for role in roles:
            admin.assign_role(tenant, api, user["id"], role)
        found[key] = Person(key, user["id"], upn, f"Console {key.title()}")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, for one module: Playwright's sync API runs an event loop in this thread while it is open, so it
    must be closed before tests that run their own loop (``asyncio.run``) come next."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run scripts/install.sh --browser (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="console-chromium-"))
    with sync_playwright() as playwright:
        # A fresh profile, no first-run, no background traffic: the browser talks only to the loopback servers.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS,
                                              downloads_path=str(profile))
        try:
            yield chromium
        finally:
            chromium.close()
            shutil.rmtree(profile, ignore_errors=True)


def sign_in(console: Console, admin: Any, tenant: str, path: str = PAGE) -> None:
    """Open ``path`` with no session: the page sends the browser through the stand-in's sign-in and back."""
    admin.set_sign_in(tenant, console.person.user_id)
    page = console.page
    page.goto(console.url(path))
    try:
        page.wait_for_selector("#who-name:not(:empty)", timeout=30_000)
        page.wait_for_selector("main[data-ready=true]")
    except Exception as error:
        raise AssertionError(f"the sign-in did not come back to the page: at {page.url}: "
                             f"{page.inner_text('body')[:500]}") from error
    assert page.inner_text("#who-name") == console.person.name


@pytest.fixture
def open_console(browser: Any, host_url: str, local_env: LocalEnvironment, people: dict[str, Person],
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., Console]]:
    """``open_console("reader")``: a new browser context (no cookies), signed in as that person."""
    assert local_env.standin is not None and local_env.api is not None
    admin, tenant = local_env.standin.admin, local_env.api.tenant_id
    opened: list[tuple[Any, Console]] = []

    def open_(key: str = "admin", path: str = PAGE) -> Console:
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900},
                                      locale="en-US", timezone_id="Europe/Berlin")
        page = context.new_page()
        page.set_default_timeout(20_000)
        console = Console(page, host_url, people[key])
        page.on("console", lambda message: console.problems.append(message.text)
                if message.type == "error" and "Content Security Policy" in message.text else None)
        page.on("pageerror", lambda error: console.problems.append(f"script error: {error}"))
        opened.append((context, console))
        sign_in(console, admin, tenant, path)
        return console

    yield open_
    failed = getattr(request.node, "failed", False)
    for index, (context, console) in enumerate(opened):
        if failed:
            with contextlib.suppress(Exception):  # the page may be gone: the failure itself says more
                console.screenshot(f"failed-{request.node.name}-{index}")
        context.close()
    admin.set_sign_in(None, None)
    for _, console in opened:
        assert console.problems == [], console.problems


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here drives the browser, and is end to end: ``-m browser`` picks them, ``-m "not e2e"`` skips them."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.failed = True  # type: ignore[attr-defined]
    return report
