"""The notifications' webhook over real HTTP (a receiver on loopback): the status is the answer, whatever body
comes with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientSession, web

from shared.azure import webhook
from shared.azure.webhook import HttpWebhook

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Clients:
    """What HttpWebhook needs of AzureClients: the one HTTP session."""

    def __init__(self, session: ClientSession) -> None:
        self._session = session

    def session(self) -> ClientSession:
        return self._session


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/hook", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/hook"

    yield start
    for runner in runners:
        await runner.cleanup()


def _streaming(chunks: int, chunk: bytes, pause: float, sent: list[int]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=202)
        await response.prepare(request)
        try:
            for _ in range(chunks):
                await response.write(chunk)
                sent.append(len(chunk))
                await asyncio.sleep(pause)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    return handler


async def _post(url: str) -> int:
    async with ClientSession() as session:
        return await HttpWebhook(_Clients(session)).post(url, b"{}", {"Content-Type": "application/json"})  # type: ignore[arg-type]


async def test_a_large_answer_is_not_read(receiver: Any) -> None:
    """(Review I.) The whole answer was read into memory, unbounded: 256 MiB here; the status was all it needed."""
    sent: list[int] = []
    url = await receiver(_streaming(256, b"x" * (1 << 20), 0, sent))
    assert await _post(url) == 202
    assert sum(sent) <= 16 << 20


async def test_a_2xx_whose_body_comes_slowly_is_a_delivery(receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review I.) Waiting for a slow body ran into the timeout: a delivered notice counted as failed and was sent
    again, up to 30 times over a day."""
    monkeypatch.setattr(webhook, "TIMEOUT_SECONDS", 1)
    sent: list[int] = []
    url = await receiver(_streaming(30, b" ", 0.2, sent))
    assert await _post(url) == 202


@pytest.mark.parametrize(("status", "headers", "wait"), [
    (429, {"Retry-After": "120"}, 120.0), (503, {"retry-after-ms": "90000"}, 90.0), (503, {}, None),
    (500, {"Retry-After": "120"}, None)])
async def test_a_429_or_503_answer_carries_the_receiver_s_wait(receiver: Any, status: int, headers: dict[str, str],
                                                               wait: float | None) -> None:
    """(Review FC 5.) The receiver's wait, as every client reads it (``retry_after_of``), goes with a 429 or 503
    to the outbox, which tries again no sooner."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, headers=headers)

    answered = await _post(await receiver(handler))
    assert answered == status
    assert getattr(answered, "retry_after", None) == wait


async def test_a_delivery_is_a_client_span_naming_the_receiver_s_origin_only_and_sends_the_trace_on(
        receiver: Any, exporter: Any) -> None:
    """(Review of telemetry, 1.) The POST made no span: failed deliveries never showed among the dependencies, and
    the receiver could not join the trace. The span's URL is the origin alone: a workflow's URL carries its
    secret in its path and query."""
    from aiohttp import web as aioweb

    seen: list[str | None] = []

    async def handler(request: aioweb.Request) -> aioweb.Response:
        seen.append(request.headers.get("traceparent"))
        return aioweb.Response(status=503)

    url = await receiver(handler)
    secret_url = url + "?sig=S3cr3tS1gnature"  # the path (here /hook) may carry a secret too
    async with ClientSession() as session:
        status = await HttpWebhook(_Clients(session)).post(secret_url, b"{}", {})  # type: ignore[arg-type]
    assert status == 503
    [span] = [s for s in exporter.get_finished_spans() if s.attributes.get("upstream") == "webhook"]
    assert span.kind.name == "CLIENT" and span.attributes["http.response.status_code"] == 503
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["url.full"] == url.rsplit("/hook", 1)[0] + "/"
    assert not [v for v in span.attributes.values() if "S3cr3t" in str(v) or "/hook" in str(v)]
    assert seen and seen[0] and seen[0].split("-")[1] == format(span.context.trace_id, "032x")
