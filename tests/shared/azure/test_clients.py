"""The shared aiohttp session never reuses a connection that a server may be closing for idleness.

Azurite (Node's http server) closes a keep-alive connection after 5 s of quiet. A request written on it
at that moment gets no answer ("Server disconnected"), and a ``POST`` (a Table ``$batch``) is then not
retried, since it may have been applied. Measured here with Azurite 3.35: a connection idle 5.3 s or
more, reused while the event loop was busy, failed that way every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from types import SimpleNamespace

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import HttpRequest

from shared.azure import clients as clients_module
from shared.azure.clients import KEEPALIVE_SECONDS, TABLES, AzureClients
from shared.azure.retry import RETRY_TOTAL
from shared.azure.retry_policy import retry_policy
from shared.errors import UpstreamError
from shared.settings import load_settings

AZURITE_IDLE_SECONDS = 5.0  # Node's default keepAliveTimeout, which Azurite keeps


class IdleClosingServer:
    """Answers every request on a keep-alive connection, except one that comes after the connection was
    idle ``idle`` seconds or more: that one is read and dropped unanswered, as a server that closed the
    connection just then. Counts the connections it accepted."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.connections = 0
        self.dropped = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        last = time.monotonic()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if time.monotonic() - last >= self.idle:
                    self.dropped += 1
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
                last = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[IdleClosingServer]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


async def two_posts_apart(
    keepalive: float, idle: float, gap: float, monkeypatch: pytest.MonkeyPatch
) -> IdleClosingServer:
    monkeypatch.setattr(clients_module, "KEEPALIVE_SECONDS", keepalive)
    clients = AzureClients(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    try:
        async with IdleClosingServer(idle).running() as server:
            pipeline = AsyncPipeline(clients.transport(TABLES), policies=[retry_policy()])
            url = f"http://127.0.0.1:{server.port}/devstoreaccount1/$batch"
            first = await pipeline.run(HttpRequest("POST", url, content=b"{}"))
            await first.http_response.read()
            await asyncio.sleep(gap)
            second = await pipeline.run(HttpRequest("POST", url, content=b"{}"))
            await second.http_response.read()
            assert second.http_response.status_code == 200
            return server
    finally:
        await clients.close()


async def test_a_connection_idle_past_the_keepalive_is_not_reused(monkeypatch):
    server = await two_posts_apart(keepalive=0.2, idle=0.4, gap=0.6, monkeypatch=monkeypatch)
    assert server.connections == 2 and server.dropped == 0


async def test_reusing_a_connection_the_server_closed_fails_a_post(monkeypatch):
    """The same exchange with a keep-alive longer than the server's: the failure the setting prevents."""
    with pytest.raises(ServiceRequestError):
        await two_posts_apart(keepalive=10.0, idle=0.4, gap=0.6, monkeypatch=monkeypatch)


def test_the_keepalive_stays_well_below_azurites():
    assert KEEPALIVE_SECONDS <= AZURITE_IDLE_SECONDS - 1.5


async def test_the_shared_session_uses_the_keepalive():
    clients = AzureClients(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    try:
        connector = clients.session().connector
        assert connector is not None and connector._keepalive_timeout == KEEPALIVE_SECONDS
    finally:
        await clients.close()


async def test_every_azure_core_transport_connects_within_the_connect_timeout() -> None:
    """(Review E.) The SDKs' transports (tokens, Key Vault, Table writes) kept azure-core's 300 s connect timeout,
    retried up to ten times; the lean client connects within the same bound."""
    from shared.azure.clients import CONNECT_TIMEOUT_SECONDS, ENTRA, READ_TIMEOUT_SECONDS, AzureClients
    from shared.settings import load_settings

    clients = AzureClients(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    try:
        config = clients.transport(ENTRA).connection_config
        assert (config.timeout, config.read_timeout) == (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
        assert clients.rest(ENTRA).connect_timeout == CONNECT_TIMEOUT_SECONDS
    finally:
        await clients.close()


# -- the Tables SDK's pipeline runs the one retry policy ---------------------------------------------------------
async def _table_server(answers: list[tuple[int, dict[str, str]]]) -> tuple[asyncio.Server, list[str]]:
    """Table Storage on a loopback port answering its n-th request with ``answers[n]`` (status, headers), then
    201; returns the server and the request lines it was sent."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                               if line.lower().startswith("content-length:")), 0)
                await reader.readexactly(length)
                seen.append(head.split("\r\n", 1)[0])
                status, headers = answers[len(seen) - 1] if len(seen) <= len(answers) else (201, {})
                body = (b'{"odata.error":{"code":"ServerBusy","message":{"value":"busy"}}}' if status >= 400
                        else b'{"TableName":"t"}')
                extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json;odata=minimalmetadata\r\n"
                             f"Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


async def test_the_tables_sdk_s_pipeline_runs_the_service_s_retry_policy_not_its_own() -> None:
    """azure-data-tables ignores ``retry_policy=`` and builds its own policy (three status retries, no jitter, any
    Retry-After waited for); every table client of the service shares the pipeline with the one policy in its
    place (review W): four 503s in a row (one more than its own takes) are retried through, and a Retry-After
    past the budget is refused at once instead of slept on."""
    from azure.core.exceptions import HttpResponseError
    from azure.core.pipeline.policies import AsyncRetryPolicy

    from shared.azure.retry_policy import TablesRetryPolicy
    from tests.loopback_table import connection_string, port_of

    server, seen = await _table_server([(503, {})] * 4 + [(201, {}), (503, {"Retry-After": "3600"})])
    clients = AzureClients(load_settings({"AzureWebJobsStorage": connection_string(port_of(server))}))
    try:
        service = clients.table_service()
        retries = [p for p in service._policies if isinstance(p, AsyncRetryPolicy)]
        assert [type(p) for p in retries] == [TablesRetryPolicy]
        table = await clients.table("Connections")  # created through the service's pipeline: five attempts
        assert len(seen) == 5
        started = time.monotonic()
        with pytest.raises(HttpResponseError):
            await table.create_entity({"PartitionKey": "p", "RowKey": "r"})
        assert time.monotonic() - started < 5 and len(seen) == 6
    finally:
        await clients.close()
        server.close()


class DroppingServer:
    """Reads each request, then closes its connection without answering; counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DroppingServer]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


class FixedToken:
    async def get_token(self, *scopes: str, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(token="t", expires_on=2**31)


async def test_a_get_dropped_every_time_is_sent_as_often_as_the_policy_says_not_twice_as_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the retries 4.) aiohttp's session sent an idempotent request once more, at once, when its
    connection dropped (``ClientSession._retry_connection``), inside each attempt of the one policy: a GET dropped
    every time went out 22 times, not 1 + ``RETRY_TOTAL``, in pairs without back-off and unseen by the spans. So
    over an azure-core pipeline (Key Vault, Tables, Entra ID) and over Graph's transport, on the one session."""
    from shared.azure import retry as retry_module
    from shared.azure.graph import GraphApps

    monkeypatch.setattr(retry_module, "BACKOFF_FACTOR", 0.001)  # the waits are not what is counted here
    async with DroppingServer().running() as server:
        origin = f"http://127.0.0.1:{server.port}"
        clients = AzureClients(replace(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}),
                                       graph_endpoint=origin))
        try:
            pipeline = AsyncPipeline(clients.transport(TABLES), policies=[retry_policy()])
            with pytest.raises((ServiceRequestError, ServiceResponseError)):
                await pipeline.run(HttpRequest("GET", f"{origin}/devstoreaccount1/T()"))
            sdk = server.requests
            with pytest.raises(UpstreamError):
                await GraphApps(clients, FixedToken()).find("app")  # type: ignore[arg-type]
            graph = server.requests - sdk
        finally:
            await clients.close()
    assert (sdk, graph) == (RETRY_TOTAL + 1, RETRY_TOTAL + 1)


async def test_a_close_hook_that_fails_does_not_keep_the_clients_open(caplog):
    clients = AzureClients(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    ran: list[str] = []

    async def failing() -> None:
        ran.append("failing")
        raise RuntimeError("secret-looking detail")

    async def after() -> None:
        ran.append("after")

    clients.on_close(failing)
    clients.on_close(after)
    lean = clients.rest(TABLES)
    await clients.close()
    assert ran == ["failing", "after"]
    assert clients.rest(TABLES) is not lean  # the lean clients were closed and dropped: a new one is built
    assert "RuntimeError" in caplog.text and "secret-looking detail" not in caplog.text
    await clients.close()
