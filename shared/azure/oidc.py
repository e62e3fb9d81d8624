"""GET of the authority's OIDC documents (discovery and signing keys) for ``shared.auth``: the Entra pipeline of
``shared.azure.clients`` (the shared session, the one retry policy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import UpstreamError

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients


async def get_document(clients: AzureClients, url: str) -> tuple[int, bytes]:
    from azure.core.exceptions import AzureError
    from azure.core.rest import HttpRequest

    try:
        request = HttpRequest("GET", url, headers={"Accept": "application/json"})
        response = await clients.entra_tokens().send_request(request)
        body = await response.read()
    except (AzureError, OSError, TimeoutError):
        raise UpstreamError("Entra ID's signing keys could not be fetched.") from None
    return response.status_code, body
