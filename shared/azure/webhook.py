"""The outbound webhook of notifications: a POST over the service's one HTTP session (``shared.azure.clients``),
with a short timeout, answered by its status (and a 429's or 503's wait) alone; the outbox retries what fails
(``shared.notify``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared import telemetry
from shared.azure.retry import ALWAYS_RETRIED, retry_after_of
from shared.ports import WEBHOOK_TIMEOUT_SECONDS, WebhookStatus

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

TIMEOUT_SECONDS = WEBHOOK_TIMEOUT_SECONDS  # the port's: a delivery pass starts a send only when it fits


class HttpWebhook:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` to ``url``, in a client span (a dependency for the operator, with the trace sent on) whose
        URL is the receiver's origin alone: a Teams or Slack workflow's URL carries its secret in the path."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        sent = dict(headers)
        with telemetry.client_span("POST", _origin(url), sent, {"upstream": "webhook"}) as span:
            async with self._clients.session().post(url, data=body, headers=sent, timeout=timeout,
                                                    allow_redirects=False) as response:
                telemetry.set_response(span, response.status)
                # The status is the answer: the body is not read (a large one would be buffered, a slow one would
                # time out a delivery that was made and have it sent again); its connection is closed, not reused.
                # A 429's or 503's wait (Retry-After, or retry-after-ms) is the least the outbox waits to try again.
                wait = retry_after_of({name.lower(): value for name, value in response.headers.items()}) \
                    if response.status in ALWAYS_RETRIED else None
                return WebhookStatus(response.status, wait)


def _origin(url: str) -> str:
    """The scheme, host and port of ``url``: no user info, path or query (they may carry its secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}/"
