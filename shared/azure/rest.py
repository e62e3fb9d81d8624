"""A small HTTP/1.1 client on the standard library alone, for the lean paths (Table Storage reads and small
single-entity writes).

A read, or a route that writes only a small entity, must stay lean: on a cold instance it must not import aiohttp
or azure-core (a quarter of a second between them), and warm it must cost little CPU, which azure-core's pipeline
and the Tables SDK's generic (de)serializer do not. This client sends one request with an optional body
(:meth:`RestClient.send`; :meth:`RestClient.get` for a GET), and does it the way every other Azure call of the
service is made:

- one keep-alive pool per origin; a connection idle for longer than ``KEEPALIVE_SECONDS``
  (``shared.azure.clients``: below the 5 s after which Azurite, Node's server, closes it) is closed, not
  reused, nor is one already known to be closed (so nothing of a request is written on it). Each request to the
  origin closes those of its idle connections past that time, when it takes one and when it gives one back, so a
  burst's connections do not stay open behind the few that later traffic reuses;
- a request that finds its reused connection closed by the server before any answer byte is sent once more at
  once on a new connection, without counting as a retry, when it may be sent again at all (:func:`replayable`:
  an idempotent method, or a PATCH without ``If-Match``). A POST is not: once its bytes are written, nothing
  tells a server that closed the connection before reading them from one that read and applied them and then
  closed it (the server's FIN and the request cross on the wire), and a POST applied twice is two entities or a
  409 for the caller's own insert. So a POST is written only on a connection not known to be closed, and if that
  connection then drops without an answer, the POST is not resent: the caller gets a :class:`RestError`;
- a body is sent with its ``Content-Length`` (also ``0`` for a POST, PUT or PATCH without one, which servers
  may require); the framing headers are the client's, a caller's ``Content-Length`` or ``Transfer-Encoding`` is
  refused;
- TLS with ``ssl.create_default_context()``, built once on first HTTPS use (so ``SSL_CERT_FILE`` set by the
  host is honoured, as the local stand-in's CA is);
- a connect timeout, and ``READ_TIMEOUT_SECONDS`` without a byte counted as a dropped connection;
- answers delimited by ``Content-Length`` or chunked, at most ``max_body`` bytes;
- the ONE retry schedule of ``shared.azure.retry`` (:func:`~shared.azure.retry.with_retries`), with its method
  rules (:func:`retried_statuses`, :func:`replayable`): 429 and 503 (``Retry-After`` honoured) for every
  method; 408, 500, 502 and 504, and dropped connections, for the idempotent methods (GET, HEAD, PUT, DELETE,
  OPTIONS, TRACE); 500 and 504 also for POST and PATCH; a dropped PATCH without ``If-Match`` too; never a
  POST whose connection dropped (it may have been applied). Within ``RETRY_TOTAL`` retries and
  ``RETRY_BUDGET`` seconds of waiting. A connection that could not be opened is retried for every method
  (nothing was sent);
- each attempt a client span of ``shared.telemetry`` labelled with its ``upstream``, as azure-core's transport
  of ``shared.azure.clients`` makes them.

Any other answer (404, 409, 412, a POST's 502, ...) is returned to the caller as it came; what cannot be retried
or ran out of retries is a :class:`RestError`. Build clients with ``AzureClients.rest(upstream)`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared import telemetry
from shared.azure.retry import (
    ALWAYS_RETRIED,
    RETRY_BUDGET,
    RETRY_TOTAL,
    RetryableError,
    retry_after_of,
    with_retries,
)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})  # azure-core's
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # an idempotent request's
UNSAFE_RETRIED_STATUSES = ALWAYS_RETRIED | {500, 504}  # a POST's or a PATCH's, as azure-core retries them
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # methods that always say their Content-Length
MAX_BODY_BYTES = 32 * 1024 * 1024  # a page of 1000 entities is a few MB; more is not an answer we asked for
MAX_IDLE_PER_ORIGIN = 32  # idle connections kept per origin; more are closed when released
_HEAD_LIMIT = 64 * 1024  # the status line and headers, in all

_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """The TLS context of every HTTPS connection, built on first use (not at import: ``SSL_CERT_FILE``)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


def retried_statuses(method: str) -> frozenset[int]:
    """The answers after which a request of ``method`` (upper case) is sent again: ``shared.azure.retry``'s
    rules, as azure-core applies them (a POST or PATCH after 429, 500, 503 or 504 only)."""
    if method in IDEMPOTENT_METHODS:
        return RETRIED_STATUSES
    if method in ("POST", "PATCH"):
        return UNSAFE_RETRIED_STATUSES
    return ALWAYS_RETRIED


def replayable(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a request that got no answer (its connection dropped) may be sent again: an idempotent one, or a
    PATCH without ``If-Match`` (absolute values: see ``shared.azure.retry_policy._unconditional_patch``). Not a
    POST (it may have been applied) nor a conditional PATCH (applied, its retry would fail its ETag check)."""
    if method in IDEMPOTENT_METHODS:
        return True
    return method == "PATCH" and not any(name.lower() == "if-match" for name in headers)


class RestError(Exception):
    """A request that got no usable answer: retries ran out (``status`` is the last answer's, or None when the
    connection failed), its connection dropped and it may not be sent again (a POST: it may have been applied),
    or the answer was malformed or too large (not retried). The message names the request without its query
    (which may carry a continuation key) and never holds a body. ``inner_exception`` is the failure of a request
    that got no answer (refused, timed out, reset), which its client span names as ``error.type``, as azure-core's
    transport errors keep theirs."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 retryable: bool = False, inner_exception: BaseException | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable
        self.inner_exception = inner_exception


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float

    def close(self) -> None:
        self.writer.close()


class StaleConnection(Exception):
    """A kept-alive connection the upstream had closed: nothing was answered, and the request is sent again on a
    new connection (its own client span, which says it is a resend)."""


class _Dropped(Exception):
    """The connection failed; ``answered`` when some of the answer had arrived."""

    def __init__(self, cause: BaseException, answered: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.answered = answered


class RestClient:
    """Keep-alive requests to one upstream (``upstream`` labels its spans); close with :meth:`close`."""

    def __init__(
        self,
        upstream: str,
        *,
        keepalive: float,
        read_timeout: float,
        connect_timeout: float,
        max_body: int = MAX_BODY_BYTES,
        attempts: int = RETRY_TOTAL + 1,
        budget: float = RETRY_BUDGET,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.keepalive = keepalive
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.attempts = attempts
        self.budget = budget
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.opened = 0  # connections opened so far (what keep-alive saves is visible in tests)

    async def get(self, url: str, headers: Mapping[str, str]) -> Response:
        """GET ``url`` (absolute, http or https) with ``headers``; retried on the service's schedule."""
        return await self.send("GET", url, headers)

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """``method`` ``url`` (absolute, http or https) with ``headers`` and ``body``; retried on the service's
        schedule as the method allows (:func:`retried_statuses`, :func:`replayable`)."""
        method = method.upper()
        if not (method.isascii() and method.isalpha()):
            raise RestError(f"The method {method[:20]!r} cannot be sent")
        parts = urlsplit(url)
        origin, host = _origin(parts.scheme, parts.netloc)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise RestError(f"The header {name!r} cannot be sent: it would split the request")
            if name.lower() in ("content-length", "transfer-encoding"):
                raise RestError(f"The header {name!r} is the client's to send")
        if body or method in _WITH_BODY:
            lines.append(f"Content-Length: {len(body)}")
        retried = retried_statuses(method)
        again = replayable(method, headers)
        where = f"{method} {self._where(origin[0], host, parts.path)}"

        sends = 0

        async def attempt() -> Response:
            nonlocal sends
            fresh = False
            while True:  # each send its own span: a replay on a new connection too
                sent = dict(headers)
                attributes: dict[str, str | int] = {"upstream": self.upstream, **telemetry.resent(sends)}
                sends += 1
                try:
                    with telemetry.client_span(method, url, sent, attributes) as span:
                        head = "\r\n".join([*lines, *(f"{name}: {value}" for name, value in sent.items()), "", ""])
                        response = await self._exchange(origin, head.encode("latin-1") + body, again,
                                                        method == "HEAD", fresh)
                        telemetry.set_response(span, response.status)
                    break
                except StaleConnection:
                    fresh = True
            if response.status in retried:
                raise RestError(f"{where} answered {response.status}", status=response.status,
                                retry_after=retry_after_of(response.headers), retryable=True)
            return response

        return await with_retries(attempt, _classify, attempts=self.attempts, budget=self.budget,
                                  sleep=self._sleep, rng=self._rng, what=where)

    @staticmethod
    def _where(scheme: str, host: str, path: str) -> str:
        return f"{scheme}://{host}{path}"

    async def _exchange(self, origin: tuple[str, str, int], request: bytes, again: bool, head_only: bool,
                        fresh: bool = False) -> Response:
        """One request on a pooled connection (a new one when ``fresh``). A reused one found closed before any
        answer byte raises :class:`StaleConnection` when the request may be sent ``again`` (the caller sends it on
        a new one: see the module's docstring)."""
        connection = None if fresh else self._take(origin)
        if connection is not None:
            try:
                return await self._send(origin, connection, request, head_only)
            except _Dropped as dropped:
                if dropped.answered:
                    raise RestError(f"The connection dropped mid-answer ({dropped})", retryable=again,
                                    inner_exception=dropped.cause) from None
                if not again:
                    raise RestError(f"The reused connection dropped before any answer ({dropped}); the request "
                                    "was not sent again, as it may have been applied",
                                    inner_exception=dropped.cause) from None
                raise StaleConnection(str(dropped)) from None
        try:
            return await self._send(origin, await self._open(origin), request, head_only)
        except _Dropped as dropped:
            if again:
                raise RestError(f"The connection dropped ({dropped})", retryable=True,
                                inner_exception=dropped.cause) from None
            raise RestError(f"The connection dropped ({dropped}); the request was not sent again, as it may have "
                            "been applied", inner_exception=dropped.cause) from None

    def _expire(self, pool: list[_Connection], now: float) -> None:
        """Close the connections of ``pool`` idle for longer than ``keepalive``: the first ones, as the pool is
        kept in the order they were given back."""
        stale = 0
        while stale < len(pool) and now - pool[stale].idle_since > self.keepalive:
            pool[stale].close()
            stale += 1
        if stale:
            del pool[:stale]

    def _take(self, origin: tuple[str, str, int]) -> _Connection | None:
        pool = self._idle.get(origin)
        now = self._clock()
        if pool:
            self._expire(pool, now)
        while pool:
            connection = pool.pop()
            if (now - connection.idle_since <= self.keepalive and not connection.reader.at_eof()
                    and not connection.writer.is_closing()):
                return connection
            connection.close()
        return None

    async def _open(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, hostname, port = origin
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    hostname, port, ssl=_tls() if scheme == "https" else None,
                    server_hostname=hostname if scheme == "https" else None, limit=_HEAD_LIMIT)
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise RestError(f"Could not connect to {scheme}://{hostname}:{port} ({type(error).__name__})",
                            retryable=not isinstance(error, ssl.SSLCertVerificationError),
                            inner_exception=error) from None
        self.opened += 1
        return _Connection(reader, writer, self._clock())

    async def _send(self, origin: tuple[str, str, int], connection: _Connection, request: bytes,
                    head_only: bool) -> Response:
        answered = False
        reusable = False
        try:
            async with asyncio.timeout(self.read_timeout) as deadline:
                loop = asyncio.get_running_loop()
                connection.writer.write(request)
                await connection.writer.drain()
                reader = connection.reader
                while True:
                    raw = await reader.readuntil(b"\r\n\r\n")
                    answered = True
                    status, version, headers = _parse_head(raw)
                    if not 100 <= status < 200 or status == 101:
                        break
                self._renew(deadline, loop)
                body, delimited = await self._body(reader, headers, status, head_only, deadline, loop)
                keep = headers.get("connection", "").lower()
                reusable = delimited and "close" not in keep and (version == "HTTP/1.1" or "keep-alive" in keep)
        except asyncio.LimitOverrunError:
            connection.close()
            raise RestError("The answer's headers are too large") from None
        except RestError:
            connection.close()
            raise
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as error:
            connection.close()
            raise _Dropped(error, answered) from None
        except ValueError:  # a malformed status line, header or chunk size
            connection.close()
            raise RestError("A malformed answer (its status line, a header or a chunk size)") from None  # never
            # the error's text: it quotes what came, which may be a token
        except BaseException:
            connection.close()
            raise
        if reusable:
            connection.idle_since = self._clock()
            pool = self._idle.setdefault(origin, [])
            self._expire(pool, connection.idle_since)
            if len(pool) < MAX_IDLE_PER_ORIGIN:
                pool.append(connection)
            else:
                connection.close()
        else:
            connection.close()
        return Response(status, headers, body)

    def _renew(self, deadline: asyncio.Timeout, loop: asyncio.AbstractEventLoop) -> None:
        """Bytes arrived: the read deadline moves to ``read_timeout`` from now, unless it was set less than a
        hundredth of that ago (a head and body that arrive together reschedule no timer). So it is never later
        than ``read_timeout`` after the last bytes, and at most a hundredth of it sooner."""
        now = loop.time()
        when = deadline.when()
        if when is None or when - now < self.read_timeout * 0.99:
            deadline.reschedule(now + self.read_timeout)

    async def _body(self, reader: asyncio.StreamReader, headers: Mapping[str, str], status: int, head_only: bool,
                    deadline: asyncio.Timeout, loop: asyncio.AbstractEventLoop) -> tuple[bytes, bool]:
        """The body and whether its end was delimited (so the connection may be reused). A HEAD's answer has
        none, whatever its headers say."""
        if head_only or status in (204, 304):
            return b"", True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                length = int(line.split(b";", 1)[0].strip(), 16)
                if length < 0:
                    raise ValueError("negative chunk size")
                if length == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    return b"".join(chunks), True
                size += length
                if size > self.max_body:
                    raise RestError(f"The answer is larger than {self.max_body} bytes")
                chunks.append(await reader.readexactly(length))
                if await reader.readexactly(2) != b"\r\n":
                    raise ValueError("a chunk without its CRLF")
                self._renew(deadline, loop)
        declared = headers.get("content-length")
        if declared is not None:
            length = int(declared)
            if length < 0:
                raise ValueError("negative Content-Length")
            if length > self.max_body:
                raise RestError(f"The answer is larger than {self.max_body} bytes")
            return (await reader.readexactly(length) if length else b""), True
        data = bytearray()  # delimited by the end of the connection
        while chunk := await reader.read(65536):
            data += chunk
            if len(data) > self.max_body:
                raise RestError(f"The answer is larger than {self.max_body} bytes")
            self._renew(deadline, loop)
        return bytes(data), False

    async def close(self) -> None:
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for connection in pool:
                connection.close()
        for pool in pools.values():
            for connection in pool:
                with contextlib.suppress(OSError, ssl.SSLError):
                    await connection.writer.wait_closed()


@functools.lru_cache(maxsize=64)
def _origin(scheme: str, netloc: str) -> tuple[tuple[str, str, int], str]:
    """The pool key ``(scheme, host, port)`` of a URL's origin and its ``Host`` header."""
    parts = urlsplit(f"{scheme}://{netloc}")
    hostname = parts.hostname
    if scheme not in ("http", "https") or not hostname:
        raise RestError(f"Not an http(s) URL: {scheme}://{hostname or ''}")
    default = 443 if scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError:
        raise RestError(f"Not a valid port in {scheme}://{netloc}") from None
    name = f"[{hostname}]" if ":" in hostname else hostname
    return (scheme, hostname, port), (name if port == default else f"{name}:{port}")


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    text = raw.decode("latin-1")
    status_line, _, rest = text.partition("\r\n")
    version, _, remainder = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x status line")
    status = int(remainder[:3])
    headers: dict[str, str] = {}
    for line in rest.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("a header line without a colon")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return status, version, headers


def _classify(error: Exception) -> RetryableError | None:
    if isinstance(error, RestError) and error.retryable:
        return RetryableError(str(error), error.retry_after)
    return None
