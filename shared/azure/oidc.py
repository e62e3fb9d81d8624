"""GET of the authority's OIDC documents (discovery and signing keys) for ``shared.auth``: the lean GET client of
``shared.azure.clients`` (``shared.azure.rest``: keep-alive, the one retry schedule, a client span per attempt), so
that the first request of a cold instance imports neither aiohttp nor azure-core to check its token. A read still
answered 429 or 503 when the retries ran out is :class:`~shared.errors.UpstreamThrottled` (a ``503`` with Entra's
``Retry-After``), any other failure an :class:`~shared.errors.UpstreamError` (``502``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import UpstreamError, UpstreamThrottled

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients


async def get_document(clients: AzureClients, url: str) -> tuple[int, bytes]:
    from shared.azure.clients import ENTRA
    from shared.azure.rest import RestError

    try:
        response = await clients.rest(ENTRA).get(url, {"Accept": "application/json"})
    except RestError as error:
        if error.status in (429, 503):  # still throttling or unavailable when the retries ran out: Entra's wait
            raise UpstreamThrottled("Entra ID is busy and its signing keys could not be fetched; try again later.",
                                    retry_after=error.retry_after) from None
        raise UpstreamError("Entra ID's signing keys could not be fetched.") from None
    except (OSError, TimeoutError):
        raise UpstreamError("Entra ID's signing keys could not be fetched.") from None
    return response.status, response.body
