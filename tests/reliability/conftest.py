"""Fixtures of the reliability campaign: the same Azurite + stand-in + local host as ``tests/e2e``, shared.

Only one local host may run per process (``FunctionApp.get_functions()`` runs once), so when the end-to-end
session fixtures are already up (a whole-suite run: ``tests/e2e`` sorts first) their values are reused; when
only this directory runs, the same environment is started here, once.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Registry

ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = ROOT / ".reliability"


def _live_e2e_value(request: pytest.FixtureRequest, name: str) -> Any:
    """The value of the end-to-end session fixture ``name`` if it was already set up in this session."""
    manager = request.session._fixturemanager
    for mapping in (manager._arg2node2fixturedefs.get(name, {}), manager._arg2nodeid2fixturedefs.get(name, {})):
        for fixturedefs in mapping.values():
            for fixturedef in fixturedefs:
                if getattr(fixturedef.func, "__module__", "") == __name__:
                    continue
                cached = fixturedef.cached_result
                if cached is not None and cached[2] is None:
                    return cached[0]
    return None


@pytest.fixture(scope="session")
def secrets_used(request: pytest.FixtureRequest) -> Registry:
    live = _live_e2e_value(request, "secrets_used")
    return live if live is not None else Registry()


@pytest.fixture(scope="session")
def local_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              secrets_used: Registry) -> Iterator[Any]:
    live = _live_e2e_value(request, "local_env")
    if live is not None:
        yield live
        return
    from localdev.environment import LocalEnvironment
    from shared.settings import reset_settings

    saved = dict(os.environ)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    env = LocalEnvironment(
        tmp_path_factory.mktemp("localdev"), table_prefix="Rel" + secrets.token_hex(4), sweep_schedule="0 0 0 1 1 *",
        site_url=f"http://127.0.0.1:{host_port}",
    )
    env.start()
    try:
        env.apply()
        reset_settings()
        assert env.identity is not None
        secrets_used.add(env.identity.client_secret)
        secrets_used.add(*[client.client_secret for client in env.oauth_clients.values()])
        yield env
    finally:
        env.stop()
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()


@pytest.fixture(scope="session")
def host_url(request: pytest.FixtureRequest, local_env: Any) -> Iterator[str]:
    live = _live_e2e_value(request, "host_url")
    if live is not None:
        yield live
        return
    from localdev.host import LocalHost, load_function_app, run_in_thread

    app = load_function_app("function_app", ROOT)
    local_host = LocalHost(app, ROOT / "host.json")
    with run_in_thread(local_host.asgi, int(local_env.settings["SITE_URL"].rsplit(":", 1)[1])) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def api(host_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def admin(local_env: Any) -> Any:
    assert local_env.standin is not None
    return local_env.standin.admin


@pytest.fixture(scope="session")
def openapi_document(api: httpx.Client) -> dict[str, Any]:
    """The document as the service serves it (``GET /api/v1/openapi.json``)."""
    response = api.get("/api/v1/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    assert isinstance(document, dict)
    return document


def write_report(name: str, figures: dict[str, Any]) -> Path:
    """Merge ``figures`` into ``.reliability/<name>.json`` (git-ignored) and return its path."""
    REPORT_DIR.mkdir(exist_ok=True)
    (REPORT_DIR / ".gitignore").write_text("*\n")
    path = REPORT_DIR / f"{name}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(figures)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path


class Conformance:
    """Checks an answer against the OpenAPI document: documented status, content type, headers and body schema."""

    def __init__(self, document: dict[str, Any]) -> None:
        import schemathesis

        self.document = document
        self.schema = schemathesis.openapi.from_dict(document)
        self.seen: list[str] = []

    def check(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        """``path`` is the documented template, e.g. ``/api/v1/app-connections/{app}``."""
        operation = self.document["paths"][path][method.lower()]
        documented = operation["responses"]
        status = str(response.status_code)
        assert status in documented, f"{method} {path}: {status} is not documented ({sorted(documented)})"
        content = documented[status].get("content")
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        if content:
            assert content_type in content, f"{method} {path} {status}: {content_type} not in {sorted(content)}"
        for name, header in (documented[status].get("headers") or {}).items():
            assert not header.get("required") or name.lower() in response.headers, f"{method} {path}: no {name}"
        if content_type.endswith("json"):
            self.schema[path][method.upper()].validate_response(response)
        self.seen.append(f"{method.upper()} {path} {status}")
        return response


@pytest.fixture(scope="session")
def conformance(openapi_document: dict[str, Any]) -> Conformance:
    return Conformance(openapi_document)
