"""The console's functions: the page, a connection's page and the assets, served with strict headers through the
local host over real HTTP; nothing outside ``console/assets`` is ever served, and nothing heavy is imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from localdev.host import LocalHost, run_in_thread
from shared.functions.console import bp, content_security_policy

ROOT = Path(__file__).resolve().parents[3]
CONSOLE_DIR = ROOT / "console"
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "form-action 'self' https://login.example.test; frame-ancestors 'none'; base-uri 'none'")


@pytest.fixture(scope="module")
def console(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    from shared.settings import reset_settings

    monkeypatch_module.setenv("AZURE_AUTHORITY_HOST", "https://login.example.test/")
    monkeypatch_module.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    reset_settings()
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    app.register_functions(bp)
    with run_in_thread(LocalHost(app, ROOT / "host.json", run_timers=False).asgi) as base_url, \
            httpx.Client(base_url=base_url, follow_redirects=False) as client:
        yield client
    reset_settings()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_policy_allows_this_origin_and_the_sign_in_authority_only() -> None:
    assert content_security_policy("https://login.example.test/") == POLICY
    assert content_security_policy("https://login.example.test/some/path") == POLICY


def test_the_root_redirects_to_the_page(console: httpx.Client) -> None:
    response = console.get("/")
    assert response.status_code == 302
    assert response.headers["location"] == "/organization/app-connections"


@pytest.mark.parametrize("path", ["/organization/app-connections",
                                  "/organization/app-connections/azure-key-vault/0f8fad5b-d9cb-469f-a165-70867728950e"])
def test_the_page_is_served_with_strict_headers(console: httpx.Client, path: str) -> None:
    response = console.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == POLICY
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.text == (CONSOLE_DIR / "index.html").read_text()


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere() -> None:
    import re

    for path in [CONSOLE_DIR / "index.html", *sorted((CONSOLE_DIR / "assets").iterdir())]:
        text = path.read_text()
        assert "<style" not in text and " style=" not in text, path
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path
        assert ".innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text, path
        assert "eval(" not in text and "new Function" not in text, path


def test_assets_are_served_with_their_type_and_an_etag(console: httpx.Client) -> None:
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")):
        response = console.get(f"/console/assets/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(kind)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == (CONSOLE_DIR / "assets" / name).read_bytes()
        again = console.get(f"/console/assets/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("path", [
    "/console/assets/missing.js", "/console/assets/..%2Findex.html", "/console/assets/%2e%2e%2f%2e%2e%2fhost.json",
    "/console/assets/App.JS", "/console/assets/app.js.map", "/console/assets/.hidden.js",
    "/organization/app-connections/%3Cscript%3E/x", "/organization/app-connections/foo/bar",
    "/organization/app-connections/Azure-Key-Vault/0f8fad5b-d9cb-469f-a165-70867728950e",
])
def test_nothing_else_is_served(console: httpx.Client, path: str) -> None:
    response = console.get(path)
    assert response.status_code == 404
    assert "<" not in response.text


def test_the_console_imports_nothing_heavy() -> None:
    code = ("import sys, shared.functions.console\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in {'azure', 'msgraph', 'pydantic', 'cryptography',"
            " 'httpx', 'aiohttp', 'jwt'} and m not in {'azure'} and not m.startswith('azure.functions')]\n"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
