"""The outbound webhook of notifications: a POST over the service's one HTTP session (``shared.azure.clients``),
with a short timeout, answered by its status (and a 429's or 503's wait) alone; the outbox retries what fails
(``shared.notify``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.azure.retry import ALWAYS_RETRIED, retry_after_of
from shared.ports import WEBHOOK_TIMEOUT_SECONDS, WebhookStatus

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

TIMEOUT_SECONDS = WEBHOOK_TIMEOUT_SECONDS  # the port's: a delivery pass starts a send only when it fits


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
            # A 429's or 503's wait (Retry-After, or retry-after-ms) is the least the outbox waits to try again.
            wait = retry_after_of({name.lower(): value for name, value in response.headers.items()}) \
                if response.status in ALWAYS_RETRIED else None
            return WebhookStatus(response.status, wait)
