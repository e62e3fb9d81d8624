"""The outbound webhook of notifications: a POST over the service's one HTTP session (``shared.azure.clients``),
with a short timeout, answered by its status alone; the outbox retries what fails (``shared.notify``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

TIMEOUT_SECONDS = 15


class HttpWebhook:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        async with self._clients.session().post(url, data=body, headers=dict(headers), timeout=timeout,
                                                allow_redirects=False) as response:
            # The status is the answer: the body is not read (a large one would be buffered, a slow one would
            # time out a delivery that was made and have it sent again); its connection is closed, not reused.
            return response.status
