"""GET of the authority's OIDC documents (discovery and signing keys) for ``shared.auth``: the lean GET client of
``shared.azure.clients`` (``shared.azure.rest``: keep-alive, the one retry schedule, a client span per attempt), so
that the first request of a cold instance imports neither aiohttp nor azure-core to check its token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import UpstreamError

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients


async def get_document(clients: AzureClients, url: str) -> tuple[int, bytes]:
    from shared.azure.clients import ENTRA
    from shared.azure.rest import RestError

    try:
        response = await clients.rest(ENTRA).get(url, {"Accept": "application/json"})
    except (RestError, OSError, TimeoutError):
        raise UpstreamError("Entra ID's signing keys could not be fetched.") from None
    return response.status, response.body
