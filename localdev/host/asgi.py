"""The local host itself: :class:`LocalHost` serves one ``func.FunctionApp`` as an ASGI 3 application.

Built from an app (and its host.json for the route prefix), it indexes the functions once: HTTP triggers are
routed by :class:`~localdev.host.routes.RouteTemplate`, timer triggers get a task each while the server runs
(:mod:`localdev.host.timers`), other triggers are only listed and can be started by the admin route.

Per request it

* answers ``GET /admin/host/status`` and ``POST /admin/functions/{name}`` (starts a timer or non-HTTP
  function in the background, 202) like Core Tools;
* picks the HTTP function whose template matches (404 otherwise) and allows the method (405 with ``Allow``
  otherwise), checks the function key when one is configured (``function_key=`` or ``LOCALDEV_FUNCTION_KEY``;
  ``x-functions-key`` or ``?code=``, 401 otherwise) and reads the body up to ``max_body_bytes`` (413);
* calls the function with a ``func.HttpRequest`` and turns its ``func.HttpResponse`` (or ``str``/``bytes``,
  or None for 204) into the ASGI response; a function that raises is a 500.

Errors are ``application/problem+json`` documents. Each request is logged with its path, never its query
string (it may carry the key). The ASGI lifespan starts the timers and, at shutdown, cancels them and awaits
each ``on_shutdown`` hook (e.g. closing Azure clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import azure.functions as func
from azure.functions.decorators.function_app import Function

from localdev.host.functions import (
    OtherFunction,
    TraceContext,
    call_function,
    check_parameters,
    enum_text,
    function_bindings,
    invocation_kwargs,
    trigger_binding,
)
from localdev.host.loading import index_functions, read_route_prefix
from localdev.host.routes import HttpFunction, HttpFunctionInfo, RouteTemplate
from localdev.host.timers import TimerFunction, TimerFunctionInfo, run_timer, timer_function, timer_loop

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FUNCTION_KEY_ENV",
    "PROBLEM_JSON",
    "ASGIApp",
    "LocalHost",
    "ShutdownHook",
]

logger = logging.getLogger("localdev.host")  # one logger for the whole host, as before it was a package

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ShutdownHook = Callable[[], Awaitable[object]]

DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's default request size limit
FUNCTION_KEY_ENV = "LOCALDEV_FUNCTION_KEY"
PROBLEM_JSON = "application/problem+json"

_NO_BODY_STATUSES = frozenset({204, 304})


def _problem(status: int, title: str, detail: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An RFC 9457 ``application/problem+json`` response: status, headers, body."""
    document: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        document["detail"] = detail
    body = json.dumps(document).encode()
    return status, [(b"content-type", PROBLEM_JSON.encode()), (b"cache-control", b"no-store"),
                    (b"x-content-type-options", b"nosniff")], body


def _logged_path(scope: Scope) -> str:
    """The request's path for the log, as it came (still percent-encoded: a %0a cannot start a line of its own)."""
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path") or "")
    return text.encode("unicode_escape").decode("ascii")[:2000]


def _trace_context(headers: Mapping[str, str]) -> TraceContext | None:
    """The caller's W3C trace context, handed to the function as the host hands its own."""
    traceparent = headers.get("traceparent")
    return TraceContext(traceparent, headers.get("tracestate") or "") if traceparent else None


class _TooLarge(Exception):
    """The request body exceeds ``max_body_bytes`` (413)."""


class LocalHost:
    """Serves one FunctionApp as an ASGI 3 application (:attr:`asgi`), including its timer triggers."""

    def __init__(
        self,
        app: func.FunctionApp,
        host_json: Path | None = None,
        *,
        route_prefix: str | None = None,
        function_key: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        run_timers: bool = True,
        on_shutdown: Iterable[ShutdownHook] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.route_prefix = (read_route_prefix(host_json) if route_prefix is None else route_prefix).strip("/")
        key = env.get(FUNCTION_KEY_ENV, "") if function_key is None else function_key
        self.function_key: str | None = key or None
        self.max_body_bytes = max_body_bytes
        self.run_timers = run_timers
        self.on_shutdown: list[ShutdownHook] = list(on_shutdown)
        self._http: list[HttpFunction] = []
        self._timers: dict[str, TimerFunction] = {}
        self._other: dict[str, OtherFunction] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        for order, function in enumerate(index_functions(app)):
            self._add(function, order, env)

    # ---- indexing -------------------------------------------------------------------------------

    def _add(self, function: Function, order: int, environ: Mapping[str, str]) -> None:
        name = function.get_function_name() or function.get_user_function().__name__
        trigger = trigger_binding(function)
        trigger_type = str(trigger.get("type"))
        arg_name = str(trigger.get("name") or "req")
        user_function = function.get_user_function()
        wants_context = check_parameters(name, user_function, function_bindings(function))
        for binding in function_bindings(function):
            if binding.get("name") in (arg_name, "$return"):
                continue
            logger.warning(
                "Function %s: %s binding %r is not supported by the local host",
                name,
                binding.get("type"),
                binding.get("name"),
            )
        if trigger_type == "httpTrigger":
            route = str(trigger.get("route") or name).strip("/")
            full = f"{self.route_prefix}/{route}" if self.route_prefix else route
            raw_methods = trigger.get("methods")
            methods = frozenset(enum_text(m).upper() for m in raw_methods) if raw_methods else None
            auth = enum_text(trigger.get("authLevel") or "function").lower()
            info = HttpFunctionInfo(name, full.strip("/"), methods, auth, arg_name)
            self._http.append(HttpFunction(info, RouteTemplate(full), user_function, order, wants_context))
        elif trigger_type == "timerTrigger":
            self._timers[name] = timer_function(name, trigger, arg_name, user_function, wants_context, environ)
        else:
            logger.warning("Function %s: %s triggers are not run by the local host", name, trigger_type)
            self._other[name] = OtherFunction(name, trigger_type, arg_name, user_function, wants_context)

    # ---- introspection --------------------------------------------------------------------------

    def http_functions(self) -> list[HttpFunctionInfo]:
        """The HTTP functions, in declaration order."""
        return [function.info for function in self._http]

    def timer_functions(self) -> list[TimerFunctionInfo]:
        """The timer functions, their schedules expanded."""
        return [timer.info for timer in self._timers.values()]

    @property
    def asgi(self) -> ASGIApp:
        """The ASGI 3 application (this object)."""
        return self

    # ---- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http_request(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("Local host startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    logger.exception("Local host shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start the timer loops (called by the ASGI lifespan startup)."""
        self._loop = asyncio.get_running_loop()
        if self.run_timers:
            for timer in self._timers.values():
                self._tasks.append(asyncio.create_task(timer_loop(timer), name=f"timer:{timer.info.name}"))

    async def shutdown(self) -> None:
        """Stop the timer loops, then await each ``on_shutdown`` hook (called by the ASGI lifespan shutdown)."""
        tasks, self._tasks = self._tasks, []
        tasks.extend(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:
                logger.exception("Shutdown hook %s failed", getattr(hook, "__qualname__", hook))
        self._loop = None

    # ---- HTTP -----------------------------------------------------------------------------------

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = str(scope["method"]).upper()
        try:
            status, headers, body = await self._dispatch(scope, receive, method)
        except Exception:  # a bug in the host itself, not in a function
            logger.exception("Local host failed on %s %s", method, _logged_path(scope))
            status, headers, body = _problem(500, "Internal Server Error")
        if status in _NO_BODY_STATUSES:
            body = b""
        else:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        # The path only: a query string may carry the function key (?code=).
        elapsed_ms = (time.perf_counter() - started) * 1e3
        logger.info("%s %s -> %d (%.1f ms)", method, _logged_path(scope), status, elapsed_ms)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > self.max_body_bytes:
                        raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _authorized(self, info_auth_level: str, headers: Mapping[str, str], params: Mapping[str, str]) -> bool:
        if self.function_key is None or info_auth_level == "anonymous":
            return True
        supplied = headers.get("x-functions-key") or params.get("code") or ""
        return hmac.compare_digest(supplied.encode(), self.function_key.encode())

    async def _dispatch(
        self, scope: Scope, receive: Receive, method: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raw_path: bytes = scope.get("raw_path") or quote(scope.get("path", "/")).encode()
        path_text = raw_path.decode("latin-1").split("?", 1)[0]
        parts = [unquote(part) for part in path_text.split("/") if part]
        query_bytes: bytes = scope.get("query_string", b"")
        params: dict[str, str] = {}
        for key, value in parse_qsl(query_bytes.decode("latin-1"), keep_blank_values=True):
            params.setdefault(key, value)
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            if name in headers:
                headers[name] = f"{headers[name]}{'; ' if name == 'cookie' else ', '}{value}"
            else:
                headers[name] = value

        admin = await self._admin(parts, method, headers, params, receive, scope)
        if admin is not None:
            return admin

        candidates: list[tuple[HttpFunction, dict[str, str]]] = []
        for function in self._http:
            values = function.template.match(parts)
            if values is not None:
                candidates.append((function, values))
        if not candidates:
            return _problem(404, "Not Found", "No function of this app answers at this path.")
        allowed = [(f, v) for f, v in candidates if f.info.methods is None or method in f.info.methods]
        if not allowed:
            methods = sorted({m for f, _ in candidates for m in (f.info.methods or ())})
            status, response_headers, body = _problem(405, "Method Not Allowed",
                                                      f"This path answers {', '.join(methods)}.")
            response_headers.append((b"allow", ", ".join(methods).encode()))
            return status, response_headers, body
        function, route_params = min(allowed, key=lambda fv: (fv[0].template.precedence, fv[0].order))

        if not self._authorized(function.info.auth_level, headers, params):
            return _problem(401, "Unauthorized")
        try:
            body = await self._read_body(scope, receive)
        except _TooLarge:
            return _problem(413, "Content Too Large", f"The request body exceeds {self.max_body_bytes} bytes.")

        host = headers.get("host")
        if not host:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        url = f"{scope.get('scheme', 'http')}://{host}{path_text}"
        if query_bytes:
            url += "?" + query_bytes.decode("latin-1")
        request = func.HttpRequest(
            method=method, url=url, headers=headers, params=params, route_params=route_params, body=body
        )
        try:
            result = await call_function(
                function.user_function,
                invocation_kwargs(function.info.name, function.info.arg_name, request, function.wants_context,
                                  _trace_context(headers)),
            )
        except Exception:
            # The message and traceback only; never the request body or query (it may carry ?code=).
            logger.exception("Function %s failed on %s %s", function.info.name, method, path_text)
            return _problem(500, "Internal Server Error")
        return self._response(function.info.name, result)

    @staticmethod
    def _response(name: str, result: object) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if result is None:
            return 204, [], b""
        if isinstance(result, str | bytes | bytearray):
            result = func.HttpResponse(bytes(result) if not isinstance(result, str) else result)
        if not isinstance(result, func.HttpResponse):
            logger.error("Function %s returned %s, not an HttpResponse", name, type(result).__name__)
            return _problem(500, "Internal Server Error")
        headers: list[tuple[bytes, bytes]] = []
        has_content_type = False
        for header_name, value in result.headers.items():
            lowered = header_name.lower()
            if lowered in ("content-length", "transfer-encoding"):
                continue
            has_content_type = has_content_type or lowered == "content-type"
            headers.append((header_name.encode("latin-1"), str(value).encode("latin-1")))
        if not has_content_type:
            mimetype, charset = result.mimetype, result.charset
            content_type = f"{mimetype}; charset={charset}" if mimetype.startswith("text/") else mimetype
            headers.append((b"content-type", content_type.encode("latin-1")))
        return int(result.status_code), headers, result.get_body()

    async def _admin(
        self,
        parts: list[str],
        method: str,
        headers: Mapping[str, str],
        params: Mapping[str, str],
        receive: Receive,
        scope: Scope,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        lowered = [part.casefold() for part in parts]
        if lowered == ["admin", "host", "status"] and method in ("GET", "HEAD"):
            body = json.dumps({"state": "Running", "version": "localdev"}).encode()
            return 200, [(b"content-type", b"application/json; charset=utf-8")], body
        if len(parts) == 3 and lowered[:2] == ["admin", "functions"] and method == "POST":
            name = parts[2]
            timer = next((t for n, t in self._timers.items() if n.casefold() == name.casefold()), None)
            other = next((o for n, o in self._other.items() if n.casefold() == name.casefold()), None)
            if timer is None and other is None:
                return None
            if not self._authorized("admin", headers, params):
                return _problem(401, "Unauthorized")
            try:
                raw = await self._read_body(scope, receive)
            except _TooLarge:
                return _problem(413, "Content Too Large")
            if timer is not None:
                coroutine: Awaitable[Any] = run_timer(timer, past_due=False, propagate=False)
            else:
                assert other is not None
                payload: object = None
                with contextlib.suppress(ValueError):
                    payload = json.loads(raw or b"{}").get("input")
                coroutine = self._run_other(other, payload)
            task = asyncio.ensure_future(coroutine)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return 202, [], b""
        return None

    async def _run_other(self, other: OtherFunction, payload: object) -> None:
        try:
            await call_function(
                other.user_function, invocation_kwargs(other.name, other.arg_name, payload, other.wants_context)
            )
        except Exception:
            logger.exception("Function %s failed", other.name)

    # ---- timers ---------------------------------------------------------------------------------

    async def trigger_timer(self, name: str, *, past_due: bool = False) -> None:
        """Run the timer function ``name`` now (on the server's loop when it runs); its exception propagates."""
        timer = self._timers.get(name)
        if timer is None:
            known = ", ".join(sorted(self._timers)) or "none"
            raise KeyError(f"no timer function named {name!r} (timer functions: {known})")
        coroutine = run_timer(timer, past_due=past_due, propagate=True)
        loop = self._loop
        if loop is not None and loop.is_running() and loop is not asyncio.get_running_loop():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))
        else:
            await coroutine

    def describe(self, base_url: str) -> list[str]:
        """One line per function, like Core Tools prints at startup."""
        lines = []
        for http in self._http:
            methods = ",".join(sorted(http.info.methods)) if http.info.methods else "*"
            lines.append(f"{http.info.name}: [{methods}] {base_url}/{http.info.route}")
        for timer in self._timers.values():
            lines.append(f"{timer.info.name}: timerTrigger {timer.info.schedule!r}")
        for other in self._other.values():
            lines.append(f"{other.name}: {other.trigger_type}")
        return lines
