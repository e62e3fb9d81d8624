"""A loopback TCP proxy in front of a local HTTP/1.1 server (Azurite) that loses answers: it forwards every request
and answer as they are, but for a request that ``drops`` picks it sends the request on, lets the server apply it,
and closes the client's connection without the answer. What the SDKs then do (retry, or raise) is theirs.

    dropper = AnswerDropper("127.0.0.1", azurite_port, lambda method, target, body: method == "PUT")
    port = await dropper.start()
    ...
    await dropper.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients
    from shared.settings import Settings

# (method, target, body) -> whether this request's answer is lost
Picks = Callable[[str, str, bytes], bool]
# What a front end may answer for a request the storage applied (the client sends it again).
APPLIED_THEN_500 = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: 47\r\n\r\n" b'{"odata.error":{"code":"InternalError","m":""}}')


class AnswerDropper:
    def __init__(self, host: str, port: int, drops: Picks, times: int = 1, instead: bytes | None = None) -> None:
        """``instead``: an answer sent in place of the server's (a 500 after the request was applied), then the
        connection closed; None: no answer at all."""
        self.host, self.port, self.drops, self.times, self.instead = host, port, drops, times, instead
        self.dropped: list[str] = []  # "METHOD target" of each request whose answer was lost
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_in, upstream_out = await asyncio.open_connection(self.host, self.port)
        answers = asyncio.create_task(_pipe(upstream_in, client_out))
        try:
            while True:  # one request at a time: a client sends the next only once it has the answer
                try:
                    head = await client_in.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target = head.split(b" ", 2)[:2]
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await client_in.readexactly(length)
                name = f"{method.decode()} {target.decode()}"
                if len(self.dropped) < self.times and self.drops(method.decode(), target.decode(), body):
                    answers.cancel()  # the answers before this one were all delivered
                    await asyncio.gather(answers, return_exceptions=True)
                    upstream_out.write(head + body)
                    await upstream_out.drain()
                    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                        await upstream_in.readexactly(1)  # the server answered: the request was applied
                    self.dropped.append(name)
                    if self.instead is not None:
                        client_out.write(self.instead)
                        with contextlib.suppress(ConnectionError):
                            await client_out.drain()
                    return
                upstream_out.write(head + body)
                await upstream_out.drain()
        finally:
            answers.cancel()
            for writer in (client_out, upstream_out):
                writer.close()
            self._tasks.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()


@contextlib.asynccontextmanager
async def answers_lost(drops: Picks, instead: bytes | None = None, settings: Settings | None = None,
                       ) -> AsyncIterator[tuple[AnswerDropper, AzureClients]]:
    """The service's clients (from ``settings``, by default the service's) with their Table Storage calls through an
    :class:`AnswerDropper` in front of Azurite (``instead``: the answer it sends in place of the server's)."""
    from dataclasses import replace
    from urllib.parse import urlsplit

    from shared.azure.clients import AzureClients
    from shared.settings import StorageSettings, get_settings

    settings = settings or get_settings()
    plain = settings.storage.connection_string or ""
    endpoint = next(part.split("=", 1)[1] for part in plain.split(";") if part.startswith("TableEndpoint="))
    table = urlsplit(endpoint)
    dropper = AnswerDropper(table.hostname or "", table.port or 0, drops, instead=instead)
    port = await dropper.start()
    proxied = AzureClients(replace(settings, storage=StorageSettings(
        connection_string=plain.replace(endpoint, endpoint.replace(f":{table.port}", f":{port}")))))
    try:
        yield dropper, proxied
    finally:
        await dropper.stop()
        await proxied.close()
