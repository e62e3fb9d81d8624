"""Entra ID and Microsoft Graph with a connection's own credentials: the real ``Directory`` adapter.

Token probes go through azure-identity (``shared.credentials``), Graph calls through ``shared.azure.graph``;
both over the clients of ``shared.azure.clients``, with the service's one retry policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from shared.credentials import acquire_token, build_credential_async

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.apps import AppSpec, Method
    from shared.azure.clients import AzureClients
    from shared.azure.graph import GraphApps
    from shared.ports import TokenSource


class AzureDirectory:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def probe(self, app: AppSpec, method: Method, tenant_id: str, client_id: str,
                    material: Mapping[str, str]) -> None:
        await acquire_token(self._clients, app, method, tenant_id, client_id, material)

    @asynccontextmanager
    async def graph(self, method: Method, tenant_id: str, client_id: str, material: Mapping[str, str], *,
                    read_keys: bool | None = None) -> AsyncIterator[GraphApps]:
        from shared.apps import Method
        from shared.azure.graph import GraphApps
        from shared.rotation.pacing import GRAPH_TENANT

        credential = await build_credential_async(self._clients, method, tenant_id, client_id, material)
        tenant = GRAPH_TENANT.set(tenant_id)  # a sweep paces each tenant's Graph requests apart
        try:
            async with credential:
                yield GraphApps(self._clients, credential,
                                read_keys=method is Method.CERTIFICATE if read_keys is None else read_keys)
        finally:
            GRAPH_TENANT.reset(tenant)

    @asynccontextmanager
    async def graph_with(self, tokens: TokenSource) -> AsyncIterator[GraphApps]:
        from shared.azure.graph import GraphApps

        credential: AsyncTokenCredential = tokens  # type: ignore[assignment]  # get_token is all Graph uses
        yield GraphApps(self._clients, credential)

    @contextmanager
    def paced(self, on_request: Callable[[Any], Awaitable[None]],
              on_response: Callable[[Any], Awaitable[None]]) -> Iterator[None]:
        """The hooks on the one Graph client of the process: they see every Graph request while the block runs, and
        act on their own sweep's (``shared.rotation.pacing.GraphPacing.applied``)."""
        hooks: dict[str, list[Callable[[Any], Awaitable[None]]]] = self._clients.graph_http().event_hooks
        hooks["request"].append(on_request)
        hooks["response"].append(on_response)
        try:
            yield
        finally:
            hooks["request"].remove(on_request)
            hooks["response"].remove(on_response)
