"""The token endpoint's grants through the one retry policy, over HTTP to a loopback server: an authorization code
is single use, so a redemption is sent again only when the answer says it was not processed (review FC 4)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from shared.azure.clients import AzureClients
from shared.azure.entra import redeem
from shared.errors import UpstreamError
from shared.settings import load_settings

ALREADY_REDEEMED = {"error": "invalid_grant", "error_description": "AADSTS54005: OAuth2 Authorization code was "
                    "already redeemed, please retry with a new valid code or use an existing refresh token."}
TOKENS = {"token_type": "Bearer", "access_token": "at", "refresh_token": "rt", "expires_in": 3600}


@asynccontextmanager
async def token_endpoint(*answers: tuple[bytes, dict[str, object]]) -> AsyncIterator[tuple[AzureClients, list[bytes]]]:
    """A token endpoint that gives ``answers`` (status line and headers, JSON body) in turn, the last one again."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                seen.append(head + await reader.readexactly(int(length[0].split(b":")[1]) if length else 0))
                status, body = answers[min(len(seen), len(answers)) - 1]
                data = json.dumps(body).encode()
                writer.write(status + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(data) + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # The settings take only an https:// authority; the loopback server speaks plain HTTP.
    settings = dataclasses.replace(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}),
                                   authority_host=f"http://127.0.0.1:{port}")
    clients = AzureClients(settings)
    try:
        yield clients, seen
    finally:
        await clients.close()
        server.close()


CODE = {"grant_type": "authorization_code", "code": "single-use", "client_id": "c", "redirect_uri": "https://x/cb"}
REFRESH = {"grant_type": "refresh_token", "refresh_token": "r", "client_id": "c"}


@pytest.mark.parametrize("status", [b"HTTP/1.1 500 Internal Server Error", b"HTTP/1.1 502 Bad Gateway",
                                    b"HTTP/1.1 504 Gateway Timeout", b"HTTP/1.1 503 Service Unavailable"])
async def test_a_code_redemption_answered_5xx_is_not_sent_again_and_is_entra_s_failure(status: bytes) -> None:
    """Entra may have redeemed the code before the gateway failed: sent again, it would be refused AADSTS54005 and
    the user told their sign-in was rejected. It is sent once, and the answer is Entra's failure (502). (A 503
    without a wait is not known to be unprocessed either.)"""
    async with token_endpoint((status, {"error": "server_error"}), (b"HTTP/1.1 400 Bad Request", ALREADY_REDEEMED)) \
            as (clients, seen):
        with pytest.raises(UpstreamError) as caught:
            await redeem(clients, "tenant", CODE)
    assert len(seen) == 1 and caught.value.status == (503 if b" 503 " in status else 502)  # 503: busy, later


async def test_a_token_endpoint_still_throttling_is_a_503_with_entra_s_wait() -> None:
    """Entra still throttling when the retries ran out (a wait past their budget ends them at once) is a 503 with
    its wait, as any Azure service's; it was a 502 without one (review Z2)."""
    async with token_endpoint((b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 600", {"error": "x"})) \
            as (clients, seen):
        with pytest.raises(UpstreamError) as caught:
            await redeem(clients, "tenant", REFRESH)
    assert len(seen) == 1 and caught.value.status == 503 and caught.value.headers["Retry-After"] == "600"


async def test_a_code_redemption_answered_503_or_429_with_a_wait_was_not_processed_and_is_sent_again() -> None:
    async with token_endpoint((b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0", {"error": "x"}),
                              (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0", {"error": "x"}),
                              (b"HTTP/1.1 200 OK", TOKENS)) as (clients, seen):
        result = await redeem(clients, "tenant", CODE)
    assert len(seen) == 3 and result.access_token == "at"


async def test_a_refresh_answered_504_is_sent_again_as_any_post_the_policy_retries() -> None:
    async with token_endpoint((b"HTTP/1.1 504 Gateway Timeout", {"error": "x"}), (b"HTTP/1.1 200 OK", TOKENS)) \
            as (clients, seen):
        result = await redeem(clients, "tenant", REFRESH)
    assert len(seen) == 2 and result.refresh_token == "rt"
