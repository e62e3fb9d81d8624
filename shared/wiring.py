"""The one place that builds the adapters and hands them to the domain services.

The HTTP functions and the timers get their services here; tests build the same services from in-memory fakes
(``tests/fakes.py``) or, end to end, from :func:`adapters` over clients of their own.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # shared.ports is imported where used: a read, the audit search or a token check builds no Adapters
    from shared.audit import AuditLog
    from shared.auth import TokenValidator
    from shared.azure.clients import AzureClients
    from shared.connections import ConnectionService
    from shared.health import HealthChecker, HealthReport
    from shared.oauth import OAuthFlow
    from shared.oauth_start import OAuthStart
    from shared.ports import Adapters, Clock, HistoryStore, OAuthStateLookup
    from shared.rotation.protocol import Checkpoint, RotationOptions, Rotator
    from shared.rotation.sweep import SweepReport
    from shared.sessions import Sessions, SignIn
    from shared.views import ConnectionReader


def _now() -> datetime:
    return datetime.now(UTC)


def adapters(clients: AzureClients | None = None, *, clock: Clock | None = None) -> Adapters:
    """The real adapters over ``clients`` (the running event loop's by default)."""
    from shared.azure.clients import get_clients
    from shared.azure.directory import AzureDirectory
    from shared.azure.entra import EntraTokenEndpoint
    from shared.azure.webhook import HttpWebhook
    from shared.ports import Adapters
    from shared.store.audit import AuditTable
    from shared.store.history import RotationHistory
    from shared.store.oauth_states import OAuthStates
    from shared.store.schedule import HEALTH_PARTITION, ScheduleIndex
    from shared.store.tables import ConnectionsTable
    from shared.store.vault import SecretVault

    clients = clients or get_clients()
    connections = ConnectionsTable(clients)
    return Adapters(
        settings=clients.settings, connections=connections, vault=SecretVault(clients),
        schedule=ScheduleIndex(clients), history=RotationHistory(clients), directory=AzureDirectory(clients),
        tokens=EntraTokenEndpoint(clients), oauth_states=OAuthStates(clients), audit=AuditTable(clients),
        outbox=connections, health_index=ScheduleIndex(clients, HEALTH_PARTITION), webhook=HttpWebhook(clients),
        clock=clock or _now,
        sleep=asyncio.sleep,
    )


@dataclass(frozen=True)
class Services:
    adapters: Adapters
    rotator: Rotator
    connections: ConnectionService
    oauth: OAuthFlow


def services(base: Adapters | None = None, *, clock: Clock | None = None, options: RotationOptions | None = None,
             checkpoint: Checkpoint | None = None, owner: str | None = None) -> Services:
    """The domain services over ``base`` (the real adapters by default)."""
    from shared.connections import ConnectionService
    from shared.oauth import OAuthFlow
    from shared.rotation.protocol import RotationOptions, Rotator

    base = base or adapters()
    if clock is not None:
        base = replace(base, clock=clock)
    options = options or RotationOptions(test_timeout=base.settings.rotation_test_timeout_seconds)
    rotator = Rotator(base, options=options, checkpoint=checkpoint, owner=owner)
    connections = ConnectionService(base, rotator)
    return Services(base, rotator, connections, OAuthFlow(base, connections))


_VALIDATORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TokenValidator] = weakref.WeakKeyDictionary()


def token_validator() -> TokenValidator:
    """The running loop's validator of access tokens (its signing keys cached across requests)."""
    from shared.auth import SigningKeys, TokenValidator, fetch_json_with
    from shared.azure.clients import get_clients
    from shared.azure.oidc import get_document

    loop = asyncio.get_running_loop()
    validator = _VALIDATORS.get(loop)
    if validator is None:
        clients = get_clients()

        async def send(url: str) -> tuple[int, bytes]:
            return await get_document(clients, url)

        validator = TokenValidator(clients.settings, SigningKeys(clients.settings, fetch_json_with(send)))
        _VALIDATORS[loop] = validator
        built, of_loop = validator, weakref.ref(loop)  # the clients are the loop's: they hold no reference to it

        async def forget() -> None:
            """The clients close (the host's shutdown): the daily read of the keys behind the requests ends, and
            the validator reading over those clients is forgotten (the loop's next request builds a new one)."""
            held = of_loop()
            if held is not None and _VALIDATORS.get(held) is built:
                del _VALIDATORS[held]
            await built.close()

        clients.on_close(forget)
    return validator


def sessions() -> Sessions:
    """The console's sessions (``shared.sessions``) in Table Storage."""
    from shared.azure.clients import get_clients
    from shared.sessions import Sessions
    from shared.store.sessions import SessionTable

    clients = get_clients()
    return Sessions(SessionTable(clients), _now, clients.settings)


def sign_in() -> SignIn:
    """The console's sign-in: the API registration's authorization code flow, its client authenticated by the
    managed identity's federated credential (FEDERATION_IDENTITY_CLIENT_ID) or CONSOLE_CLIENT_SECRET."""
    from shared.azure.clients import get_clients
    from shared.azure.entra import EntraTokenEndpoint
    from shared.sessions import SignIn
    from shared.store.sessions import SessionTable

    clients = get_clients()
    identity = clients.settings.federation_identity_client_id

    async def assertion() -> str:
        # The cloud's token-exchange audience (AZURE_CLOUD), as for federated connections.
        scope = f"{clients.settings.token_exchange_audience}/.default"
        return (await clients.federation_credential().get_token(scope)).token

    return SignIn(clients.settings, SessionTable(clients), EntraTokenEndpoint(clients), token_validator(), _now,
                  assertion if identity else None)


def audit_log() -> AuditLog:
    """The audit log over its table alone (a search, or a route's records, builds no other adapter)."""
    from shared.audit import AuditLog
    from shared.azure.clients import get_clients
    from shared.store.audit import AuditTable

    return AuditLog(AuditTable(get_clients()), _now)


def rotation_history() -> HistoryStore:
    """The rotation history over its table alone (the retention timer's purge)."""
    from shared.azure.clients import get_clients
    from shared.store.history import RotationHistory

    return RotationHistory(get_clients())


def health_checker() -> HealthChecker:
    from shared.health import HealthChecker

    built = services()
    return HealthChecker(built.adapters, built.connections)


def connection_reader() -> ConnectionReader:
    """The reads of connections and of their rotation history over Table Storage's REST API without the SDK
    (``shared.store.table_reads``): no other adapter is built or imported, and neither aiohttp, azure-core nor
    azure-data-tables, so a read on a cold instance imports no more than it needs and a warm one costs little.
    Built once per clients (the running loop's): the reader holds no data, only its clients and endpoint, so
    every request still reads Table Storage."""
    global _READER
    from shared.azure.clients import get_clients

    clients = get_clients()
    cached = _READER
    if cached is not None and cached[0] is clients:
        return cached[1]
    from shared.store.table_reads import ConnectionReads, HistoryReads, TableReads
    from shared.views import ConnectionReader

    reads = TableReads(clients)
    reader = ConnectionReader(ConnectionReads(reads), HistoryReads(reads))
    _READER = (clients, reader)
    return reader


# The last reader built and the clients it reads with (one slot: a new loop's clients replace it).
_READER: tuple[AzureClients, ConnectionReader] | None = None


def oauth_state_lookup() -> OAuthStateLookup:
    """Whether an OAuth state is pending, over the lean Table reads (``shared.store.oauth_state_reads``): the
    callback refuses an answer that completes no sign-in without building the write side."""
    from shared.azure.clients import get_clients
    from shared.store.oauth_state_reads import OAuthStateReads
    from shared.store.table_reads import TableReads

    return OAuthStateReads(TableReads(get_clients()))


def oauth_start() -> OAuthStart:
    """The authorize route's start of a sign-in over the lean Table Storage adapters alone: a connection's reads
    (``shared.store.table_reads``) and the OAuth states (``shared.store.oauth_states``), so that it imports
    neither pydantic, the connection service nor the SDKs."""
    from shared.azure.clients import get_clients
    from shared.oauth_start import OAuthStart
    from shared.store.oauth_states import OAuthStates
    from shared.store.table_reads import ConnectionReads, TableReads

    clients = get_clients()
    return OAuthStart(clients.settings, ConnectionReads(TableReads(clients)), OAuthStates(clients), _now)


def connection_service() -> ConnectionService:
    return services().connections


def oauth_flow() -> OAuthFlow:
    return services().oauth


async def run_sweep() -> SweepReport:
    """One rotation sweep as the timer runs it: the service's settings, the real clock."""
    from shared.notify import Notifier
    from shared.rotation.sweep import sweep

    built = services()
    settings = built.adapters.settings
    report = await sweep(built.rotator, max_concurrency=settings.rotation_max_concurrency,
                         budget_seconds=settings.rotation_sweep_budget_seconds)
    await Notifier(built.adapters).deliver_or_keep()  # a failed rotation's notification, queued with its record
    return report


async def run_health_sweep() -> HealthReport:
    """One health sweep as the timer runs it (it delivers the notifications it queues)."""
    checker = health_checker()
    settings = checker.adapters.settings
    return await checker.sweep(max_concurrency=settings.rotation_max_concurrency,
                               budget_seconds=settings.rotation_sweep_budget_seconds)
