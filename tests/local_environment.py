"""The local environment of the end-to-end and reliability tests: Azurite, the stand-in and the local host,
started once per session on free loopback ports (only for the tests that ask for them) and always stopped.
The service runs in this process, so its logs are captured for the secret scan that runs last."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from localdev.environment import LocalEnvironment
from shared.azure.clients import AzureClients
from shared.settings import reset_settings
from tests.tokens import Tokens

if TYPE_CHECKING:
    from localdev.standin import StandIn

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Registry:
    """Every secret value the suite hands out, so the final scan can look for each one."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    """A stand-in of its own for a test module, trusted while it runs by the SDKs and by the lean client (whose TLS
    context is built again, from ``SSL_CERT_FILE``)."""
    from localdev.standin import StandIn
    from shared.azure import rest

    server = StandIn().start()
    patch = pytest.MonkeyPatch()
    patch.setenv("SSL_CERT_FILE", str(server.ca_path))
    patch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_path))
    patch.setattr(rest, "_TLS", None)
    try:
        yield server
    finally:
        patch.undo()
        server.stop()


@pytest.fixture(scope="session")
def secrets_used() -> Registry:
    return Registry()


@pytest.fixture(scope="session")
def local_env(tmp_path_factory: pytest.TempPathFactory, secrets_used: Registry) -> Iterator[LocalEnvironment]:
    saved = dict(os.environ)
    # The timers are wired but the host runs none (host_url: run_timers=False): tests drive sweeps themselves,
    # with their own clock, and trigger a timer through /admin/functions (the daily audit retention, at 03:15 UTC
    # on the real clock, purged what a test of the audit store had just written).
    # The host's port is chosen now: SITE_URL (and so the OAuth redirect URI) must be known before it starts.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    env = LocalEnvironment(
        tmp_path_factory.mktemp("localdev"), table_prefix="E2e" + secrets.token_hex(4),
        sweep_schedule="0 0 0 1 1 *", health_schedule="0 0 0 1 1 *",
        site_url=f"http://127.0.0.1:{host_port}", with_api=True,
    )
    env.start()
    try:
        assert env.standin is not None
        # Notifications go to the stand-in's webhook receiver, signed with a secret of the session.
        env.settings["NOTIFY_WEBHOOK_URL"] = env.standin.admin.webhook_url("e2e")
        env.settings["NOTIFY_WEBHOOK_SECRET"] = secrets.token_urlsafe(24)
        env.settings["REMOVAL_CONFIRMATION_SECONDS"] = "2"  # a DELETE's refusal confirmed within a test's time
        secrets_used.add(env.settings["NOTIFY_WEBHOOK_SECRET"])
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
def host_url(local_env: LocalEnvironment) -> Iterator[str]:
    from localdev.host import LocalHost, load_function_app, run_in_thread

    app = load_function_app("function_app", ROOT)
    local_host = LocalHost(app, ROOT / "host.json", run_timers=False)
    with run_in_thread(local_host.asgi, int(local_env.settings["SITE_URL"].rsplit(":", 1)[1])) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def tokens(local_env: LocalEnvironment) -> Tokens:
    """Access tokens for the service's API, for daemons and people holding the roles a test names."""
    assert local_env.api is not None
    assert local_env.standin is not None
    return Tokens(local_env.api, local_env.standin.admin)


@pytest.fixture(scope="session")
def api(host_url: str, tokens: Tokens) -> Iterator[httpx.Client]:
    """The API as an administrator (a daemon holding AppConnections.Admin) calls it."""
    with httpx.Client(base_url=host_url, timeout=60, auth=tokens.auth()) as client:
        yield client


@pytest.fixture(scope="session")
def admin(local_env: LocalEnvironment):  # type: ignore[no-untyped-def]
    assert local_env.standin is not None
    return local_env.standin.admin


@pytest.fixture(scope="session")
async def clients(local_env: LocalEnvironment) -> AsyncIterator[AzureClients]:
    """The service's own Azure clients (``shared.azure.clients``), on the local environment; closed at the end."""
    from shared.azure.clients import close_clients, get_clients

    yield get_clients()
    await close_clients()


@pytest.fixture
async def own_tables(local_env: LocalEnvironment) -> AsyncIterator[AzureClients]:
    """The service's clients on state tables of the test's own, on the session's Azurite: for a store's test that
    reads by date or time (the session's tables hold what other tests wrote at that time, and a purge would
    delete theirs)."""
    from shared.settings import load_settings

    built = AzureClients(load_settings({**local_env.settings, "STATE_TABLE_PREFIX": "Own" + secrets.token_hex(5)}))
    yield built
    await built.close()


@pytest.fixture
def no_faults(admin):  # type: ignore[no-untyped-def]
    """Clears the stand-in's fault rules after the test."""
    yield
    admin.clear_faults()
