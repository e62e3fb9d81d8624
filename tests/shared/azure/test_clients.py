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

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import HttpRequest

from shared.azure import clients as clients_module
from shared.azure.clients import KEEPALIVE_SECONDS, TABLES, AzureClients
from shared.azure.retry_policy import retry_policy
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
