"""The sweep's Graph pacing on the one Graph client of the process, over HTTP to a loopback Graph: it acts on its
own fan-out's requests only, each tenant apart (review FC 6). One tenant's 429 held every Graph request of the
process: other tenants' rotations, and an API request on the same worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.apps import Method
from shared.azure.clients import AzureClients
from shared.azure.directory import AzureDirectory
from shared.rotation.pacing import GRAPH_TENANT, AimdLimiter, GraphPacing
from shared.settings import load_settings


@pytest.fixture
async def graph() -> AsyncIterator[tuple[AzureClients, str]]:
    """Clients and a loopback Graph answering 429 (``Retry-After: 20``) to a path with ``throttle`` in it, else
    204."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                await reader.readexactly(int(length[0].split(b":")[1]) if length else 0)
                throttled = b"throttle" in head.split(b"\r\n", 1)[0]
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 20\r\nContent-Length: 0\r\n\r\n"
                             if throttled else b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    clients = AzureClients(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    try:
        yield clients, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1.0"
    finally:
        await clients.close()
        server.close()


async def test_a_sweep_paces_its_own_graph_requests_each_tenant_apart_and_no_request_outside_it(
        graph: tuple[AzureClients, str]) -> None:
    clients, endpoint = graph
    loop = asyncio.get_running_loop()
    pacing = GraphPacing(AimdLimiter(8, clock=loop.time), clock=loop.time)

    async def post(tenant: str, path: str) -> int:
        """A Graph write of a session for ``tenant`` (as ``AzureDirectory.graph`` sets it)."""
        token = GRAPH_TENANT.set(tenant)
        try:
            return (await clients.graph_http().request("POST", f"{endpoint}/{path}", json={})).status_code
        finally:
            GRAPH_TENANT.reset(token)

    with AzureDirectory(clients).paced(pacing.on_request, pacing.on_response):
        with pacing.applied():  # a rotation of the sweep
            assert await post("tenant-a", "applications/a/throttle") == 429  # tenant A's writes: held for 20 s
            assert await asyncio.wait_for(post("tenant-b", "applications/b/addPassword"), 5) == 204
        assert pacing.tenants["tenant-a"]["write"].throttles == 1
        assert pacing.tenants["tenant-b"]["write"].throttles == 0 and pacing.pacers["write"].throttles == 0
        # An API request on the same worker, outside the sweep, for tenant A too: not held, not counted.
        assert await asyncio.wait_for(post("tenant-a", "applications/a/removePassword"), 5) == 204
        assert await asyncio.wait_for(post("tenant-a", "applications/a/throttle"), 5) == 429
    assert pacing.tenants["tenant-a"]["write"].throttles == 1 and pacing.paced() == pytest.approx(
        {"write": pacing.tenants["tenant-a"]["write"].rate})


async def test_a_graph_session_names_its_tenant_while_it_lasts(graph: tuple[AzureClients, str]) -> None:
    clients, _ = graph
    tenant = str(uuid.uuid4())
    async with AzureDirectory(clients).graph(Method.CLIENT_SECRET, tenant, str(uuid.uuid4()), {"clientSecret": "s"}):
        assert GRAPH_TENANT.get() == tenant
    assert GRAPH_TENANT.get() is None


async def test_the_fan_out_s_rotations_are_its_pacing_s(graph: tuple[AzureClients, str]) -> None:
    """Each item the fan-out handles runs under its pacing: a tenant's 429 is counted (the concurrency backs off)
    and that tenant's writes paced, the other tenant's not."""
    from shared.rotation.pacing import paced_fan_out

    clients, endpoint = graph
    loop = asyncio.get_running_loop()
    answered: dict[str, int] = {}

    async def rotate(tenant: str) -> None:
        token = GRAPH_TENANT.set(tenant)
        try:
            path = "throttle" if tenant == "tenant-a" else "addPassword"
            answered[tenant] = (await clients.graph_http().request("POST", f"{endpoint}/{path}")).status_code
        finally:
            GRAPH_TENANT.reset(token)

    fan = await asyncio.wait_for(paced_fan_out(["tenant-a", "tenant-b"], rotate,
                                               paced=AzureDirectory(clients).paced, max_concurrency=2,
                                               budget_seconds=60, monotonic=loop.time, what="test"), 10)
    assert answered == {"tenant-a": 429, "tenant-b": 204}
    assert fan.handled == 2 and fan.throttled == 1 and "write" in fan.paced
