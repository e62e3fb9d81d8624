"""The outbound webhook of notifications: a POST over the service's one HTTP session (``shared.azure.clients``),
with a short timeout; the outbox retries what fails (``shared.notify``)."""

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
            await response.read()
            return response.status
