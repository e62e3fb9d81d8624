"""The lean HTTP client (``shared.azure.rest``) against a real HTTP server on a loopback port.

The server answers each request with the next of a script of raw answers (or drops the connection once it has
read the request), and counts the connections it accepted, so keep-alive, idle expiry, retries and their waits,
and which requests are sent again by method, are seen as a client of Table Storage would see them.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from localdev.standin.pki import server_pki
from shared.azure import rest
from shared.azure.clients import KEEPALIVE_SECONDS, READ_TIMEOUT_SECONDS, AzureClients
from shared.azure.rest import RestClient, RestError, replayable, retried_statuses
from shared.azure.retry import RETRY_BUDGET, RETRY_TOTAL
from shared.settings import load_settings

DROP = b""  # in a script: close the connection instead of answering (the request, body too, was read)


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), head.encode()) + body


def status(code: int, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n%s\r\n" % (code, head.encode())


class ScriptedServer:
    """Answers the n-th request with ``script[n]`` (the last one from then on)."""

    def __init__(self, script: list[bytes], tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.closed = 0  # connections that ended (the client closed them, or the script dropped them)
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.bodies.append(await reader.readexactly(length))
                answer = self.script[min(len(self.requests), len(self.script)) - 1]
                if answer == DROP:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    def close_idle(self) -> None:
        """Close every connection, as a server whose keep-alive timeout passed."""
        for writer in self._writers:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedServer]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self.close_idle()
            server.close()
            await server.wait_closed()

    def url(self, path: str = "/devstoreaccount1/T()?$top=1") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"


class Waits:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client(**kwargs: object) -> tuple[RestClient, Waits]:
    waits = Waits()
    options: dict[str, object] = {"keepalive": KEEPALIVE_SECONDS, "read_timeout": 5.0, "connect_timeout": 10.0,
                                  "sleep": waits,
                                  "rng": random.Random(7), **kwargs}
    return RestClient("tables", **options), waits  # type: ignore[arg-type]


async def test_a_connection_is_kept_alive_and_reused() -> None:
    async with ScriptedServer([ok(b"one"), ok(b"two")]).running() as server:
        lean, waits = client()
        first = await lean.get(server.url(), {"x-ms-version": "2019-02-02"})
        second = await lean.get(server.url(), {})
        await lean.close()
    assert (first.status, first.body, second.body) == (200, b"one", b"two")
    assert server.connections == 1 and lean.opened == 1 and waits.waits == []
    assert server.requests[0].startswith(b"GET /devstoreaccount1/T()?$top=1 HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:%d\r\n" % server.port in server.requests[0]
    assert b"x-ms-version: 2019-02-02\r\n" in server.requests[0]


async def test_a_connection_idle_past_the_keepalive_is_closed_not_reused() -> None:
    now = [100.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    async with ScriptedServer([ok()]).running() as server:
        lean, _ = client(clock=clock)
        await lean.get(server.url(), {})
        now[0] += KEEPALIVE_SECONDS - 0.1
        await lean.get(server.url(), {})
        assert server.connections == 1
        now[0] += KEEPALIVE_SECONDS + 0.1
        await lean.get(server.url(), {})
        await lean.close()
    assert server.connections == 2 and lean.opened == 2


async def test_the_idle_connections_of_a_burst_are_closed_past_the_keepalive_though_only_one_is_reused() -> None:
    """Found by a review of resource bounds: an idle connection past the keep-alive was closed only when a request
    took it, and the pool is taken from the top; after a burst, sequential traffic reused the top one only, and the
    others stayed open (the server's end closed) for the worker's life."""
    now = [100.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    async with ScriptedServer([ok()]).running() as server:
        lean, _ = client(clock=clock)
        await asyncio.gather(*(lean.get(server.url(), {}) for _ in range(5)))
        assert lean.opened == 5
        now[0] += KEEPALIVE_SECONDS - 0.1
        await lean.get(server.url(), {})  # reuses the last one given back: its idle time starts again
        now[0] += 0.2
        await lean.get(server.url(), {})  # the four others are past the keep-alive now
        for _ in range(20):
            if server.closed == 4:
                break
            await asyncio.sleep(0.01)
        assert (server.closed, server.connections, lean.opened) == (4, 5, 5)
        await lean.close()


def test_the_keepalive_and_read_timeout_are_the_sdk_sessions() -> None:
    built = AzureClients(load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    lean = built.rest("tables")
    assert built.rest("tables") is lean and built.rest("graph") is not lean
    assert (lean.keepalive, lean.read_timeout, lean.upstream) == (KEEPALIVE_SECONDS, READ_TIMEOUT_SECONDS, "tables")


async def test_a_chunked_body_is_read_whole() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
               b"5;ext=1\r\n{\"a\":\r\n" b"A\r\n [1,2,3]}\n\r\n" b"0\r\nTrailer: x\r\n\r\n")
    async with ScriptedServer([chunked, ok(b"next")]).running() as server:
        lean, _ = client()
        first = await lean.get(server.url(), {})
        second = await lean.get(server.url(), {})
        await lean.close()
    assert first.body == b'{"a": [1,2,3]}\n' and first.headers["content-type"] == "application/json"
    assert second.body == b"next" and server.connections == 1


async def test_a_malformed_answer_is_refused_without_quoting_what_came() -> None:
    """(Review O.) A body sent as chunked but not chunked: the error quoted the chunk-size line, here the start of
    an access token, which reached a problem's detail and the log."""
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + "A" * 300
    broken = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
              + b'{"access_token":"' + token.encode() + b'"}\r\n0\r\n\r\n')
    async with ScriptedServer([broken]).running() as server:
        lean, _ = client()
        with pytest.raises(RestError) as refused:
            await lean.get(server.url(), {})
        await lean.close()
    assert "malformed" in str(refused.value) and "eyJ0" not in str(refused.value)


async def test_a_throttled_get_waits_the_retry_after_then_succeeds(exporter) -> None:  # type: ignore[no-untyped-def]
    async with ScriptedServer([status(429, "Retry-After: 2"), status(503), ok(b"done")]).running() as server:
        lean, waits = client()
        answer = await lean.get(server.url(), {})
        await lean.close()
    assert answer.body == b"done" and len(server.requests) == 3
    assert 2.0 <= waits.waits[0] <= 2.2  # never sooner than asked, at most 10% later
    assert 0 <= waits.waits[1] <= 1.0  # the second retry's full-jitter ceiling
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("upstream") == "tables"]
    assert [s.attributes["http.response.status_code"] for s in spans] == [429, 503, 200]
    assert all(s.name == "GET" and s.attributes["server.port"] == server.port for s in spans)
    assert b"traceparent: 00-" in server.requests[0]  # each attempt carries its own span's trace context


async def test_a_dropped_connection_is_retried() -> None:
    async with ScriptedServer([DROP, status(502), ok(b"after")]).running() as server:
        lean, waits = client()
        answer = await lean.get(server.url(), {})
        await lean.close()
    assert answer.body == b"after" and len(waits.waits) == 2 and server.connections == 2


async def test_a_reused_connection_the_server_closed_is_replaced_at_once() -> None:
    async with ScriptedServer([ok(b"first"), ok(b"second")]).running() as server:
        lean, waits = client()
        await lean.get(server.url(), {})
        server.close_idle()
        await asyncio.sleep(0.05)
        answer = await lean.get(server.url(), {})
        await lean.close()
    assert answer.body == b"second" and waits.waits == [] and lean.opened == 2


async def test_other_answers_are_returned_as_they_came() -> None:
    body = b'{"odata.error":{"code":"ResourceNotFound"}}'
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with ScriptedServer([answer]).running() as server:
        lean, waits = client()
        got = await lean.get(server.url(), {})
        await lean.close()
    assert (got.status, got.body, waits.waits, len(server.requests)) == (404, body, [], 1)


async def test_retries_end_when_the_next_wait_would_pass_the_budget() -> None:
    async with ScriptedServer([status(503, f"Retry-After: {int(RETRY_BUDGET) + 1}")]).running() as server:
        lean, waits = client()
        with pytest.raises(RestError) as raised:
            await lean.get(server.url(), {})
        await lean.close()
    assert raised.value.status == 503 and waits.waits == [] and len(server.requests) == 1


async def test_retries_end_after_the_last_attempt() -> None:
    async with ScriptedServer([DROP]).running() as server:
        lean, waits = client(budget=10_000.0)
        with pytest.raises(RestError) as raised:
            await lean.get(server.url(), {})
        await lean.close()
    assert raised.value.status is None and "dropped" in str(raised.value)
    assert len(server.requests) == RETRY_TOTAL + 1 and len(waits.waits) == RETRY_TOTAL


async def test_a_header_that_would_split_the_request_is_refused_unsent() -> None:
    async with ScriptedServer([ok()]).running() as server:
        lean, _ = client()
        with pytest.raises(RestError, match="split the request"):
            await lean.get(server.url(), {"Authorization": "Bearer x\r\nX-Injected: 1"})
        await lean.close()
    assert server.requests == []


async def test_a_body_past_the_cap_is_refused_not_retried() -> None:
    async with ScriptedServer([ok(b"x" * 100)]).running() as server:
        lean, waits = client(max_body=10)
        with pytest.raises(RestError, match="larger than 10 bytes"):
            await lean.get(server.url(), {})
        await lean.close()
    assert len(server.requests) == 1 and waits.waits == []


async def test_a_silent_server_is_a_dropped_connection() -> None:
    async with ScriptedServer([b"HTTP/1.1 200 OK\r\n"]).running() as server:  # then nothing
        lean, waits = client(read_timeout=0.2, attempts=2)
        with pytest.raises(RestError):
            await lean.get(server.url(), {})
        await lean.close()
    assert len(server.requests) == 2 and len(waits.waits) == 1


class TricklingServer(ScriptedServer):
    """Answers with a chunked body, one chunk every ``gap`` seconds (then stops after ``stall`` chunks)."""

    def __init__(self, gap: float, chunks: int, stall: int | None = None) -> None:
        super().__init__([])
        self.gap, self.chunks, self.stall = gap, chunks, stall

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for n in range(self.chunks):
                await asyncio.sleep(self.gap)
                if n == self.stall:
                    await asyncio.sleep(3600)
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


async def test_the_read_timeout_counts_from_the_last_bytes_not_from_the_request() -> None:
    async with TricklingServer(gap=0.12, chunks=5).running() as server:  # 0.6 s in all, 0.12 s between bytes
        lean, _ = client(read_timeout=0.3, attempts=1)
        answer = await lean.get(server.url(), {})
        await lean.close()
    assert answer.body == b"xxxxx"
    async with TricklingServer(gap=0.12, chunks=5, stall=2).running() as server:  # silent after 2 chunks
        lean, _ = client(read_timeout=0.3, attempts=1)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RestError, match="dropped"):
            await lean.get(server.url(), {})
        await lean.close()
    assert 0.3 * 0.99 <= asyncio.get_running_loop().time() - started - 0.24 < 0.6  # read_timeout after the last bytes


async def test_tls_is_verified_against_the_ca_of_ssl_cert_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pki = server_pki(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.cert_path, pki.key_path)
    async with ScriptedServer([ok(b"secure")], tls=tls).running() as server:
        monkeypatch.setattr(rest, "_TLS", None)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        untrusting, waits = client()
        with pytest.raises(RestError, match="SSLCertVerificationError"):
            await untrusting.get(server.url(), {})
        assert waits.waits == []  # a certificate refused is not retried
        await untrusting.close()

        monkeypatch.setattr(rest, "_TLS", None)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_path))
        lean, _ = client()
        answer = await lean.get(server.url(), {})
        again = await lean.get(server.url(), {})
        await lean.close()
    assert answer.body == again.body == b"secure" and lean.opened == 1


# -- requests with a body, and the method rules of the one retry schedule -----------------------------------------
def test_the_method_rules_are_the_retry_schedules() -> None:
    """``shared.azure.retry``: 429 and 503 for every method; 408, 500, 502, 504 and dropped connections for the
    idempotent methods; 500, 503, 504 also for POST and PATCH; a dropped PATCH without If-Match; no dropped POST."""
    for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"):
        assert retried_statuses(method) == {408, 429, 500, 502, 503, 504}
        assert replayable(method, {}) and replayable(method, {"If-Match": "*"})
    for method in ("POST", "PATCH"):
        assert retried_statuses(method) == {429, 500, 503, 504}
    assert retried_statuses("MERGE") == {429, 503}
    assert not replayable("POST", {}) and not replayable("MERGE", {})
    assert replayable("PATCH", {"Prefer": "return-no-content"})
    assert not replayable("PATCH", {"if-match": 'W/"x"'})


async def test_a_body_is_sent_with_its_content_length_on_a_kept_alive_connection(exporter) -> None:  # type: ignore[no-untyped-def]
    body = '{"PartitionKey":"p","Text":"ünï"}'.encode()
    async with ScriptedServer([status(204), status(201), status(204), ok(b"read")]).running() as server:
        lean, waits = client()
        inserted = await lean.send("post", server.url("/devstoreaccount1/T"), {"Content-Type": "application/json"},
                                   body)
        created = await lean.send("POST", server.url("/devstoreaccount1/Tables"), {})
        deleted = await lean.send("DELETE", server.url("/devstoreaccount1/T(PartitionKey='p',RowKey='r')"),
                                  {"If-Match": "*"})
        read = await lean.get(server.url(), {})
        await lean.close()
    assert [inserted.status, created.status, deleted.status, read.body] == [204, 201, 204, b"read"]
    assert server.connections == 1 and waits.waits == []
    assert server.requests[0].startswith(b"POST /devstoreaccount1/T HTTP/1.1\r\n")
    assert b"Content-Length: %d\r\n" % len(body) in server.requests[0] and server.bodies[0] == body
    assert b"Content-Length: 0\r\n" in server.requests[1]  # a POST without a body says so
    assert server.requests[2].startswith(b"DELETE ") and b"Content-Length" not in server.requests[2]
    assert b"Content-Length" not in server.requests[3] and server.bodies == [body, b"", b"", b""]
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("upstream") == "tables"]
    assert [s.name for s in spans] == ["POST", "POST", "DELETE", "GET"]


async def test_a_caller_cannot_frame_the_body_itself() -> None:
    async with ScriptedServer([ok()]).running() as server:
        lean, _ = client()
        for framing in ({"Content-Length": "3"}, {"transfer-encoding": "chunked"}):
            with pytest.raises(RestError, match="is the client's to send"):
                await lean.send("POST", server.url(), framing, b"abc")
        with pytest.raises(RestError, match="cannot be sent"):
            await lean.send("GET /x HTTP/1.1\r\n", server.url(), {})
        await lean.close()
    assert server.requests == []


async def test_a_post_answered_503_is_retried_with_its_body() -> None:
    async with ScriptedServer([status(503), status(500), status(204)]).running() as server:
        lean, waits = client()
        answer = await lean.send("POST", server.url("/devstoreaccount1/T"), {}, b"{}")
        await lean.close()
    assert answer.status == 204 and len(server.requests) == 3 and len(waits.waits) == 2
    assert server.bodies == [b"{}"] * 3


@pytest.mark.parametrize(("method", "code", "retried"), [
    ("POST", 429, True), ("POST", 504, True), ("POST", 502, False), ("POST", 408, False),
    ("PATCH", 500, True), ("PATCH", 502, False), ("PUT", 502, True), ("DELETE", 408, True), ("MERGE", 500, False),
])
async def test_which_answers_are_retried_depends_on_the_method(method: str, code: int, retried: bool) -> None:
    async with ScriptedServer([status(code), status(204)]).running() as server:
        lean, waits = client()
        answer = await lean.send(method, server.url(), {}, b"{}")
        await lean.close()
    # Retried, the second answer is seen; not retried, the first is returned as it came.
    assert (answer.status, len(server.requests), len(waits.waits)) == ((204, 2, 1) if retried else (code, 1, 0))


async def test_a_post_whose_connection_drops_is_not_sent_again() -> None:
    async with ScriptedServer([DROP, status(204)]).running() as server:
        lean, waits = client()
        with pytest.raises(RestError, match="may have been applied") as raised:
            await lean.send("POST", server.url("/devstoreaccount1/T"), {}, b"{}")
        await lean.close()
    assert raised.value.status is None and not raised.value.retryable
    assert len(server.requests) == 1 and waits.waits == []


@pytest.mark.parametrize(("method", "headers"), [("PUT", {}), ("DELETE", {"If-Match": "*"}), ("PATCH", {})])
async def test_an_idempotent_request_or_an_unconditional_patch_whose_connection_drops_is_retried(
        method: str, headers: dict[str, str]) -> None:
    async with ScriptedServer([DROP, status(204)]).running() as server:
        lean, waits = client()
        answer = await lean.send(method, server.url(), headers, b"{}" if method != "DELETE" else b"")
        await lean.close()
    assert answer.status == 204 and len(server.requests) == 2 and len(waits.waits) == 1


async def test_a_conditional_patch_whose_connection_drops_is_not_sent_again() -> None:
    async with ScriptedServer([DROP, status(204)]).running() as server:
        lean, waits = client()
        with pytest.raises(RestError, match="may have been applied"):
            await lean.send("PATCH", server.url(), {"If-Match": 'W/"1"'}, b"{}")
        await lean.close()
    assert len(server.requests) == 1 and waits.waits == []


async def test_a_post_on_a_reused_connection_known_closed_goes_on_a_new_one() -> None:
    """The server closed the idle connection and the client saw it: nothing of the POST is written on it."""
    async with ScriptedServer([status(204)]).running() as server:
        lean, waits = client()
        await lean.send("POST", server.url(), {}, b"1")
        server.close_idle()
        await asyncio.sleep(0.05)
        answer = await lean.send("POST", server.url(), {}, b"2")
        await lean.close()
    assert answer.status == 204 and server.bodies == [b"1", b"2"] and lean.opened == 2 and waits.waits == []


async def test_a_post_whose_reused_connection_drops_before_an_answer_is_not_sent_again() -> None:
    """Written on a reused connection that then closes without an answer, a POST may have been applied (the
    server's close and the request can cross): it is not resent, where a GET or a PUT is, at once."""
    async with ScriptedServer([status(204), DROP, status(204)]).running() as server:
        lean, waits = client()
        await lean.send("POST", server.url(), {}, b"1")
        with pytest.raises(RestError, match="reused connection dropped before any answer"):
            await lean.send("POST", server.url(), {}, b"2")
        await lean.close()
    assert server.bodies == [b"1", b"2"] and lean.opened == 1 and waits.waits == []

    for method in ("GET", "PUT"):
        async with ScriptedServer([status(204), DROP, status(204)]).running() as server:
            lean, waits = client()
            await lean.send(method, server.url(), {})
            answer = await lean.send(method, server.url(), {}, b"" if method == "GET" else b"2")
            await lean.close()
        assert answer.status == 204 and len(server.requests) == 3 and lean.opened == 2 and waits.waits == []


async def test_a_head_answer_has_no_body_whatever_its_length() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    async with ScriptedServer([head, ok(b"after")]).running() as server:
        lean, _ = client()
        answer = await lean.send("HEAD", server.url(), {})
        after = await lean.get(server.url(), {})
        await lean.close()
    assert (answer.status, answer.body, after.body, server.connections) == (200, b"", b"after", 1)


async def test_each_send_is_a_client_span_of_its_own_and_a_resend_says_so(exporter) -> None:  # type: ignore[no-untyped-def]
    """(Review B, session 17.) A replay on a new connection went out inside the first send's span (two requests on
    the wire, one span, one span id for both), and no span said it was a resend (``http.request.resend_count``)."""
    async with ScriptedServer([ok(b"first"), DROP, status(503), ok(b"last")]).running() as server:
        lean, _ = client()
        await lean.get(server.url(), {})
        answer = await lean.get(server.url(), {})  # its kept-alive connection is closed unanswered: sent again
        await lean.close()
    assert answer.body == b"last" and len(server.requests) == 4
    spans = [(s.attributes.get("http.request.resend_count"), s.attributes.get("http.response.status_code"),
              s.attributes.get("error.type")) for s in exporter.get_finished_spans()]
    assert spans == [(None, 200, None), (None, None, "shared.azure.rest.StaleConnection"), (1, 503, "503"),
                     (2, 200, None)]
    parents = {s.context.span_id for s in exporter.get_finished_spans()}
    assert len(parents) == 4  # each request on the wire names its own span
    sent = [next(line for line in head.split(b"\r\n") if line.lower().startswith(b"traceparent"))
            for head in server.requests]
    assert len(set(sent)) == 4


async def test_a_send_that_got_no_answer_names_its_failure_as_error_type_not_the_client_s_wrapper(
        exporter) -> None:  # type: ignore[no-untyped-def]
    """(Review of telemetry.) Every request without an answer was ``shared.azure.rest.RestError`` on its span, a
    refused connection as a reset: an operator grouping failed dependencies could not tell them apart. The span
    names what failed, as azure-core's transport spans do (``inner_exception``)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lean, _ = client(attempts=1)
    with pytest.raises(RestError):
        await lean.get(f"http://127.0.0.1:{port}/", {})
    async with ScriptedServer([DROP]).running() as server:
        with pytest.raises(RestError):
            await lean.send("POST", server.url(), {}, b"{}")  # dropped on a new connection: not sent again
    await lean.close()
    kinds = [s.attributes.get("error.type") for s in exporter.get_finished_spans()]
    assert kinds == ["ConnectionRefusedError", "asyncio.exceptions.IncompleteReadError"]
