"""Requests, responses and the dispatch table of the stand-in.

A service (admin, Key Vault, OAuth, Entra, Graph) registers ``(method, regex) -> handler`` rows on a
:class:`Router`; a handler takes a :class:`Request` and returns a :class:`Response` (or raises
:class:`HttpError` with one). Regexes are matched with ``fullmatch`` against the percent-decoded path (without
the query string), first row first; named groups land in ``Request.params``. A path that only matches under
other methods is a 405 for the server (:meth:`Router.path_known`).

The body is read only when a handler asks for it (``Content-Length`` or chunked, at most ``MAX_BODY``:
:class:`BodyTooLarge`; cut short: :class:`IncompleteBody`), so a handler can refuse a request before reading
it. Handlers put what a test may want to see in ``Request.note``; it goes into the request log.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from localdev.standin.context import Context

MAX_BODY = 16 * 1024 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class BodyTooLarge(Exception):
    """The request body exceeds ``MAX_BODY`` (the server answers 413 and closes the connection)."""


class IncompleteBody(Exception):
    """The client went away before its body was complete: a real server acts on no part of such a request."""


class HttpError(Exception):
    """Raised by a handler to answer at once with ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    merged = {"Content-Type": "application/json; charset=utf-8"}
    merged.update(headers or {})
    return Response(status, body, merged)


def empty_response(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(status, b"", dict(headers or {}))


class Request:
    """One HTTP request. The body is read from the socket only when first asked for."""

    def __init__(
        self,
        ctx: Context,
        method: str,
        target: str,
        headers: dict[str, str],
        rfile: Readable,
    ) -> None:
        self.ctx = ctx
        self.method = method.upper()
        self.target = target
        parts = urllib.parse.urlsplit(target)
        self.path = urllib.parse.unquote(parts.path)
        self.query: dict[str, str] = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query, True).items()}
        self.headers = {k.lower(): v for k, v in headers.items()}  # names compared case-insensitively
        self.params: dict[str, str] = {}
        # Filled in by handlers for the request log: what is useful to a test, never a secret value.
        self.note: dict[str, Any] = {}
        self._rfile = rfile
        self._body: bytes | None = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def body_read(self) -> bool:
        return self._body is not None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def _read_body(self) -> bytes:
        if "chunked" in self.header("transfer-encoding").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self._rfile.readline(1024)
                if not size_line.endswith(b"\n"):
                    raise IncompleteBody
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > MAX_BODY:
                    raise BodyTooLarge
                chunk = self._rfile.read(size)
                if len(chunk) < size or not self._rfile.readline(1024).endswith(b"\n"):
                    raise IncompleteBody
                chunks.append(chunk)
            return b"".join(chunks)
        length = int(self.header("content-length", "0") or "0")
        if length > MAX_BODY:
            raise BodyTooLarge
        body = self._rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise IncompleteBody
        return body

    def form(self) -> dict[str, str]:
        pairs = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in pairs.items()}

    def json(self) -> Any:
        if not self.body.strip():
            return None
        return json.loads(self.body)

    @property
    def base_url(self) -> str:
        return self.ctx.url


Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


@dataclass
class Router:
    routes: list[Route] = field(default_factory=list)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append(Route(method.upper(), re.compile(pattern), handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return register

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler for ``method path``; a path matched under another method only gives 405 (None here)."""
        for route in self.routes:
            if route.method == method:
                match = route.pattern.fullmatch(path)
                if match:
                    return route.handler, {k: v for k, v in match.groupdict().items() if v is not None}
        return None

    def path_known(self, path: str) -> bool:
        return any(route.pattern.fullmatch(path) for route in self.routes)
