"""A small local stand-in for the Azure Functions host, serving a Python v2-model ``func.FunctionApp``.

Azure Functions Core Tools cannot be installed here, so this host indexes the same ``FunctionApp`` the
real host would and serves it over a real ASGI server (uvicorn):

* HTTP triggers: route templates with the host's route prefix (``extensions.http.routePrefix`` in
  host.json, default ``api``), ASP.NET-style precedence (literal segments beat parameters), case-insensitive
  matching, method filtering (405 with ``Allow``), 404/405/500 as ``application/problem+json``.
* Function keys are not enforced by default, like Core Tools. Pass ``function_key=`` (or set
  ``LOCALDEV_FUNCTION_KEY``) to require ``x-functions-key`` or ``?code=`` on non-anonymous functions.
* Timer triggers: ``%SETTING%`` expanded from the environment, NCRONTAB schedules run in asyncio tasks.
* ``GET /admin/host/status`` and ``POST /admin/functions/{name}`` (runs a non-HTTP function) as in Core Tools.

``async def`` functions run on the server's event loop; plain functions run in a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import azure.functions as func
from azure.functions.decorators.function_app import Function
from azure.functions.timer import TimerRequest

from localdev import ncrontab
from localdev.local_settings import load_local_settings, read_local_settings

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FUNCTION_KEY_ENV",
    "HostConfigError",
    "HttpFunctionInfo",
    "InvocationContext",
    "LocalHost",
    "ShutdownHook",
    "TimerFunctionInfo",
    "build_local_host",
    "expand_settings",
    "index_functions",
    "load_function_app",
    "load_function_app_file",
    "main",
    "read_route_prefix",
    "run_in_thread",
    "serve",
]

logger = logging.getLogger("localdev.host")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ShutdownHook = Callable[[], Awaitable[object]]

DEFAULT_ROUTE_PREFIX = "api"
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's default request size limit
FUNCTION_KEY_ENV = "LOCALDEV_FUNCTION_KEY"
PROBLEM_JSON = "application/problem+json"

_SETTING_REF = re.compile(r"%([^%\s]+)%")
_NO_BODY_STATUSES = frozenset({204, 304})


class HostConfigError(RuntimeError):
    """The function app or host configuration cannot be served (missing setting, bad schedule, ...)."""


# --------------------------------------------------------------------------------------------------
# Loading and indexing
# --------------------------------------------------------------------------------------------------

# FunctionApp.get_functions() builds each function again and then rejects the names it saw last time
# ("does not have a unique function name"), so index each app once and reuse the result.
_INDEX: weakref.WeakKeyDictionary[func.FunctionApp, list[Function]] = weakref.WeakKeyDictionary()
_INDEX_LOCK = threading.Lock()


def index_functions(app: func.FunctionApp) -> list[Function]:
    """``app.get_functions()``, called at most once per app (the result is cached)."""
    with _INDEX_LOCK:
        functions = _INDEX.get(app)
        if functions is None:
            if getattr(app, "functions_bindings", None):
                # Someone else already indexed this app (e.g. a unit test); the names it remembered
                # would make a second get_functions() fail, though the functions are the same.
                app.functions_bindings = None
            functions = list(app.get_functions())
            _INDEX[app] = functions
        return functions


def _find_app(module: ModuleType) -> func.FunctionApp:
    candidate = getattr(module, "app", None)
    if isinstance(candidate, func.FunctionApp):
        return candidate
    found = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    unique = list({id(value): value for value in found}.values())
    if len(unique) == 1:
        return unique[0]
    where = getattr(module, "__file__", module.__name__)
    if not unique:
        raise HostConfigError(f"{where} defines no azure.functions.FunctionApp instance")
    raise HostConfigError(f"{where} defines {len(unique)} FunctionApp instances; name the one to serve 'app'")


def load_function_app(module: str = "function_app", app_dir: Path | None = None) -> func.FunctionApp:
    """Import ``module`` with ``app_dir`` (default: the working directory) first on ``sys.path``; its FunctionApp."""
    directory = str((app_dir or Path.cwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return _find_app(importlib.import_module(module))


def load_function_app_file(path: Path, module_name: str | None = None) -> func.FunctionApp:
    """Execute the Python file ``path`` as a fresh module (``module_name``, default derived from the path).

    Each call gives a new module and so a new FunctionApp; tests use this to load sample apps without
    clashing with the project's own ``function_app`` module.
    """
    path = path.resolve()
    name = module_name or f"_localdev_app_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HostConfigError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return _find_app(module)


def read_route_prefix(host_json: Path | None) -> str:
    """``extensions.http.routePrefix`` from host.json; ``api`` when the file or the setting is absent."""
    if host_json is None or not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    try:
        document = json.loads(host_json.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise HostConfigError(f"{host_json} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    prefix: object = DEFAULT_ROUTE_PREFIX
    extensions = document.get("extensions") if isinstance(document, dict) else None
    http = extensions.get("http") if isinstance(extensions, dict) else None
    if isinstance(http, dict) and "routePrefix" in http:
        prefix = http["routePrefix"]
    if not isinstance(prefix, str):
        raise HostConfigError(f"{host_json}: extensions.http.routePrefix must be a string")
    return prefix.strip("/")


def _enum_text(value: object) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def expand_settings(text: str, environ: Mapping[str, str], *, what: str) -> str:
    """Replace each ``%NAME%`` in ``text`` with the app setting (environment variable) ``NAME``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise HostConfigError(f"{what}: app setting {name!r} (referenced as %{name}%) is not set")
        return environ[name]

    return _SETTING_REF.sub(replace, text)


# --------------------------------------------------------------------------------------------------
# Route templates
# --------------------------------------------------------------------------------------------------

_LITERAL, _COMPLEX, _CONSTRAINED, _PARAM, _CATCH_ALL = 1, 2, 3, 4, 5

_CONSTRAINTS: dict[str, re.Pattern[str]] = {
    "int": re.compile(r"^-?\d+$"),
    "long": re.compile(r"^-?\d+$"),
    "alpha": re.compile(r"^[A-Za-z]+$"),
    "bool": re.compile(r"^(?i:true|false)$"),
    "guid": re.compile(r"^[({]?[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}[)}]?$"),
    "double": re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"),
    "float": re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"),
    "decimal": re.compile(r"^-?(\d+\.?\d*|\.\d+)$"),
}


@dataclass(frozen=True)
class _Param:
    name: str
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    checks: tuple[re.Pattern[str], ...] = ()
    constrained: bool = False

    def accepts(self, value: str) -> bool:
        return all(check.match(value) for check in self.checks)


def _parse_param(body: str, template: str) -> _Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default: str | None = None
    if "=" in body:
        body, default = body.split("=", 1)
    optional = body.endswith("?")
    body = body.rstrip("?")
    name, *constraints = body.split(":")
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise HostConfigError(f"route {template!r}: invalid parameter {{{body}}}")
    checks = tuple(_CONSTRAINTS[c.lower()] for c in constraints if c.lower() in _CONSTRAINTS)
    return _Param(name, optional or catch_all, default, catch_all, checks, bool(constraints))


@dataclass(frozen=True)
class _Segment:
    kind: int
    literal: str = ""
    param: _Param | None = None
    pattern: re.Pattern[str] | None = None
    params: tuple[_Param, ...] = ()


class RouteTemplate:
    """An ASP.NET-style route template: ``a/{b}/{c?}``, ``{id:int}``, ``{*rest}``, ``file/{name}.{ext}``."""

    def __init__(self, template: str) -> None:
        self.template = template.strip("/")
        self.segments: tuple[_Segment, ...] = (
            tuple(self._segment(part) for part in self.template.split("/") if part) if self.template else ()
        )
        for i, segment in enumerate(self.segments):
            if segment.kind == _CATCH_ALL and i != len(self.segments) - 1:
                raise HostConfigError(f"route {template!r}: a catch-all parameter must be the last segment")
        self.precedence: tuple[int, ...] = tuple(segment.kind for segment in self.segments)

    def _segment(self, part: str) -> _Segment:
        pieces = re.split(r"(\{[^{}]*\})", part)
        pieces = [piece for piece in pieces if piece]
        if len(pieces) == 1 and not pieces[0].startswith("{"):
            if "{" in part or "}" in part:
                raise HostConfigError(f"route {self.template!r}: unbalanced braces in {part!r}")
            return _Segment(_LITERAL, literal=part.casefold())
        if len(pieces) == 1:
            param = _parse_param(pieces[0][1:-1], self.template)
            if param.catch_all:
                return _Segment(_CATCH_ALL, param=param)
            return _Segment(_CONSTRAINED if param.constrained else _PARAM, param=param)
        regex, params = "", []
        for piece in pieces:
            if piece.startswith("{"):
                param = _parse_param(piece[1:-1], self.template)
                params.append(param)
                regex += f"(?P<{param.name}>.+?)"
            else:
                regex += re.escape(piece)
        return _Segment(_COMPLEX, pattern=re.compile(f"^{regex}$", re.IGNORECASE), params=tuple(params))

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """Route values when the decoded path ``parts`` match, else None."""
        values: dict[str, str] = {}
        for i, segment in enumerate(self.segments):
            if segment.kind == _CATCH_ALL:
                assert segment.param is not None
                rest = "/".join(parts[i:])
                if rest:
                    values[segment.param.name] = rest
                elif segment.param.default is not None:
                    values[segment.param.name] = segment.param.default
                return values
            if i >= len(parts):
                param = segment.param
                if param is None or not (param.optional or param.default is not None):
                    return None
                if param.default is not None:
                    values[param.name] = param.default
                continue
            part = parts[i]
            if segment.kind == _LITERAL:
                if part.casefold() != segment.literal:
                    return None
            elif segment.kind == _COMPLEX:
                assert segment.pattern is not None
                found = segment.pattern.match(part)
                if found is None:
                    return None
                for param in segment.params:
                    if not param.accepts(found[param.name]):
                        return None
                    values[param.name] = found[param.name]
            else:
                assert segment.param is not None
                if not segment.param.accepts(part):
                    return None
                values[segment.param.name] = part
        if len(parts) > len(self.segments):
            return None
        return values


# --------------------------------------------------------------------------------------------------
# Function descriptions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpFunctionInfo:
    name: str
    route: str  # the full template, route prefix included
    methods: frozenset[str] | None  # None = every method
    auth_level: str  # "anonymous", "function" or "admin"
    arg_name: str


@dataclass(frozen=True)
class TimerFunctionInfo:
    name: str
    schedule: str  # %SETTING% references expanded
    raw_schedule: str
    run_on_startup: bool
    arg_name: str


@dataclass
class _HttpFunction:
    info: HttpFunctionInfo
    template: RouteTemplate
    user_function: Callable[..., Any]
    order: int
    wants_context: bool = False


@dataclass
class _TimerFunction:
    info: TimerFunctionInfo
    schedule: ncrontab.Schedule
    user_function: Callable[..., Any]
    wants_context: bool = False
    last: datetime | None = None


@dataclass
class _OtherFunction:
    name: str
    trigger_type: str
    arg_name: str
    user_function: Callable[..., Any]
    wants_context: bool = False


def _bindings(function: Function) -> list[dict[str, Any]]:
    bindings = function.get_dict_repr().get("bindings", [])
    return [binding for binding in bindings if isinstance(binding, dict)]


def _trigger_binding(function: Function) -> dict[str, Any]:
    for binding in _bindings(function):
        if str(binding.get("type", "")).endswith("Trigger"):
            return binding
    raise HostConfigError(f"function {function.get_function_name()} has no trigger binding")


def _check_parameters(name: str, user_function: Callable[..., Any], bindings: list[dict[str, Any]]) -> bool:
    """Fail like the Python worker when parameters and bindings disagree; True when it takes ``context``."""
    try:
        signature = inspect.signature(user_function)
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {p.name for p in signature.parameters.values() if p.kind in kinds}
    bound = {str(b.get("name")) for b in bindings if b.get("name") and b.get("name") != "$return"}
    extra = params - bound - {"context"}
    if extra:
        raise HostConfigError(
            f"cannot load the {name} function: the following parameters are declared in Python but not "
            f"in the bindings: {sorted(extra)} (bindings: {sorted(bound)})"
        )
    missing = bound - params
    if missing:
        raise HostConfigError(
            f"cannot load the {name} function: the following bindings have no Python parameter: {sorted(missing)}"
        )
    return "context" in params and "context" not in bound


@dataclass(frozen=True)
class InvocationContext:
    """What a function that declares a ``context`` parameter receives (a subset of ``func.Context``)."""

    invocation_id: str
    function_name: str
    function_directory: str
    trace_context: None = None
    retry_context: None = None
    thread_local_storage: threading.local = field(default_factory=threading.local)


def _kwargs(name: str, arg_name: str, value: object, wants_context: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {arg_name: value}
    if wants_context:
        kwargs["context"] = InvocationContext(str(uuid.uuid4()), name, str(Path.cwd()))
    return kwargs


async def _call(user_function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Await ``async def`` functions on this loop; run plain functions in a worker thread."""
    if inspect.iscoroutinefunction(user_function):
        return await user_function(**kwargs)
    result = await asyncio.to_thread(user_function, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def _problem(status: int, title: str, detail: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    document: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        document["detail"] = detail
    body = json.dumps(document).encode()
    return status, [(b"content-type", PROBLEM_JSON.encode())], body


class _TooLarge(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# The host
# --------------------------------------------------------------------------------------------------


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
        self._http: list[_HttpFunction] = []
        self._timers: dict[str, _TimerFunction] = {}
        self._other: dict[str, _OtherFunction] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        for order, function in enumerate(index_functions(app)):
            self._add(function, order, env)

    # ---- indexing -------------------------------------------------------------------------------

    def _add(self, function: Function, order: int, environ: Mapping[str, str]) -> None:
        name = function.get_function_name() or function.get_user_function().__name__
        trigger = _trigger_binding(function)
        trigger_type = str(trigger.get("type"))
        arg_name = str(trigger.get("name") or "req")
        user_function = function.get_user_function()
        wants_context = _check_parameters(name, user_function, _bindings(function))
        for binding in _bindings(function):
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
            methods = frozenset(_enum_text(m).upper() for m in raw_methods) if raw_methods else None
            auth = _enum_text(trigger.get("authLevel") or "function").lower()
            info = HttpFunctionInfo(name, full.strip("/"), methods, auth, arg_name)
            self._http.append(_HttpFunction(info, RouteTemplate(full), user_function, order, wants_context))
        elif trigger_type == "timerTrigger":
            raw = str(trigger.get("schedule") or "")
            what = f"timer function {name!r} schedule {raw!r}"
            expanded = expand_settings(raw, environ, what=what)
            try:
                schedule = ncrontab.parse(expanded)
            except ValueError as exc:
                raise HostConfigError(f"{what}: {exc}") from None
            run_on_startup = bool(trigger.get("runOnStartup") or False)
            timer_info = TimerFunctionInfo(name, expanded, raw, run_on_startup, arg_name)
            self._timers[name] = _TimerFunction(timer_info, schedule, user_function, wants_context)
        else:
            logger.warning("Function %s: %s triggers are not run by the local host", name, trigger_type)
            self._other[name] = _OtherFunction(name, trigger_type, arg_name, user_function, wants_context)

    # ---- introspection --------------------------------------------------------------------------

    def http_functions(self) -> list[HttpFunctionInfo]:
        return [function.info for function in self._http]

    def timer_functions(self) -> list[TimerFunctionInfo]:
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
        self._started = True
        if self.run_timers:
            for timer in self._timers.values():
                self._tasks.append(asyncio.create_task(self._timer_loop(timer), name=f"timer:{timer.info.name}"))

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
        self._started = False
        self._loop = None

    # ---- HTTP -----------------------------------------------------------------------------------

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = str(scope["method"]).upper()
        try:
            status, headers, body = await self._dispatch(scope, receive, method)
        except Exception:  # a bug in the host itself, not in a function
            logger.exception("Local host failed on %s %s", method, scope.get("path"))
            status, headers, body = _problem(500, "Internal Server Error")
        if status in _NO_BODY_STATUSES:
            body = b""
        else:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        # The path only: a query string may carry the function key (?code=).
        elapsed_ms = (time.perf_counter() - started) * 1e3
        logger.info("%s %s -> %d (%.1f ms)", method, scope.get("path"), status, elapsed_ms)

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

        candidates: list[tuple[_HttpFunction, dict[str, str]]] = []
        for function in self._http:
            values = function.template.match(parts)
            if values is not None:
                candidates.append((function, values))
        if not candidates:
            return _problem(404, "Not Found")
        allowed = [(f, v) for f, v in candidates if f.info.methods is None or method in f.info.methods]
        if not allowed:
            methods = sorted({m for f, _ in candidates for m in (f.info.methods or ())})
            status, response_headers, body = _problem(405, "Method Not Allowed")
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
            result = await _call(
                function.user_function,
                _kwargs(function.info.name, function.info.arg_name, request, function.wants_context),
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
                coroutine: Awaitable[Any] = self._run_timer(timer, past_due=False, propagate=False)
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

    async def _run_other(self, other: _OtherFunction, payload: object) -> None:
        try:
            await _call(other.user_function, _kwargs(other.name, other.arg_name, payload, other.wants_context))
        except Exception:
            logger.exception("Function %s failed", other.name)

    # ---- timers ---------------------------------------------------------------------------------

    async def _run_timer(self, timer: _TimerFunction, *, past_due: bool, propagate: bool) -> None:
        now = datetime.now(UTC)
        try:
            upcoming = timer.schedule.next_after(now)
        except ValueError:
            upcoming = now
        request = TimerRequest(
            past_due=past_due,
            schedule_status={
                "Last": (timer.last or now).isoformat(),
                "Next": upcoming.isoformat(),
                "LastUpdated": now.isoformat(),
            },
            schedule={"AdjustForDST": True},
        )
        timer.last = now
        logger.info("Executing timer function %s (past due: %s)", timer.info.name, past_due)
        try:
            kwargs = _kwargs(timer.info.name, timer.info.arg_name, request, timer.wants_context)
            await _call(timer.user_function, kwargs)
        except Exception:
            if propagate:
                raise
            logger.exception("Timer function %s failed", timer.info.name)

    async def _timer_loop(self, timer: _TimerFunction) -> None:
        if timer.info.run_on_startup:
            await self._run_timer(timer, past_due=False, propagate=False)
        after = datetime.now(UTC)
        while True:
            due = timer.schedule.next_after(after)
            while True:
                remaining = (due - datetime.now(UTC)).total_seconds()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 60.0))  # re-check the wall clock at least every minute
            late = (datetime.now(UTC) - due).total_seconds()
            await self._run_timer(timer, past_due=late > 1.0, propagate=False)
            after = max(due, datetime.now(UTC))

    async def trigger_timer(self, name: str, *, past_due: bool = False) -> None:
        """Run the timer function ``name`` now (on the server's loop when it runs); its exception propagates."""
        timer = self._timers.get(name)
        if timer is None:
            known = ", ".join(sorted(self._timers)) or "none"
            raise KeyError(f"no timer function named {name!r} (timer functions: {known})")
        coroutine = self._run_timer(timer, past_due=past_due, propagate=True)
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


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


def build_local_host(
    app_dir: Path | None = None,
    *,
    module: str = "function_app",
    function_key: str | None = None,
    on_shutdown: Iterable[ShutdownHook] = (),
    load_settings: bool = True,
) -> LocalHost:
    """Load ``app_dir``'s local.settings.json (environment wins), import its function app, build the host."""
    directory = (app_dir or Path.cwd()).resolve()
    if load_settings:
        load_local_settings(directory / "local.settings.json")
    app = load_function_app(module, directory)
    return LocalHost(app, directory / "host.json", function_key=function_key, on_shutdown=on_shutdown)


def serve(
    port: int = 7071,
    host: str = "127.0.0.1",
    app_dir: Path | None = None,
    *,
    module: str = "function_app",
    log_level: str = "info",
    function_key: str | None = None,
    on_shutdown: Iterable[ShutdownHook] = (),
) -> None:
    """Serve ``app_dir``'s function app with uvicorn until interrupted."""
    import uvicorn

    local = build_local_host(app_dir, module=module, function_key=function_key, on_shutdown=on_shutdown)
    display_host = f"[{host}]" if ":" in host else host
    for line in local.describe(f"http://{display_host}:{port}"):
        logger.info("%s", line)
    config = uvicorn.Config(
        local.asgi,
        host=host,
        port=port,
        lifespan="on",
        interface="asgi3",
        log_level=log_level,
        reload=False,
        access_log=False,  # the host logs each request without its query string instead
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


@contextlib.contextmanager
def run_in_thread(
    asgi_app: ASGIApp,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``asgi_app`` with uvicorn in a background thread; yields ``http://127.0.0.1:PORT``.

    ``port=0`` picks a free port. Waits until the server (and its lifespan startup) is up and stops it
    cleanly on exit, running the lifespan shutdown.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            asgi_app,
            host=host,
            port=bound_port,
            lifespan="on",
            interface="asgi3",
            log_level=log_level,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)

        def run() -> None:
            with contextlib.suppress(SystemExit):  # uvicorn exits this way when the lifespan startup fails
                server.run(sockets=[sock])

        thread = threading.Thread(target=run, name=f"localdev-host:{bound_port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the local host stopped during startup (see the log for the cause)")
            if time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                raise RuntimeError(f"the local host did not start within {startup_timeout} s")
            time.sleep(0.005)
        display_host = f"[{host}]" if ":" in host else host
        try:
            yield f"http://{display_host}:{bound_port}"
        finally:
            server.should_exit = True
            thread.join(15)
            if thread.is_alive():
                logger.warning("The local host on port %d did not stop within 15 s", bound_port)
    finally:
        sock.close()


def _import_hook(spec: str) -> ShutdownHook:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise argparse.ArgumentTypeError(f"--on-shutdown wants module:function, got {spec!r}")
    hook = getattr(importlib.import_module(module_name), attribute)
    if not callable(hook):
        raise argparse.ArgumentTypeError(f"{spec} is not callable")
    return hook  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None, *, on_shutdown: Iterable[ShutdownHook] = ()) -> int:
    """``python -m localdev host [--port 7071] [--host 127.0.0.1] [--app-dir .]``."""
    parser = argparse.ArgumentParser(prog="python -m localdev host", description="Serve the function app locally.")
    parser.add_argument("--port", type=int, default=None, help="port (default: Host.LocalHttpPort or 7071)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="function app directory (default: .)")
    parser.add_argument("--module", default="function_app", help="module defining the FunctionApp")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--function-key", default=None, help=f"require this key on non-anonymous functions (env {FUNCTION_KEY_ENV})"
    )
    parser.add_argument(
        "--on-shutdown",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="async function to await at shutdown (repeatable), e.g. to close Azure clients",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_dir: Path = args.app_dir.resolve()
    settings_file = app_dir / "local.settings.json"
    port = args.port
    if port is None:
        local_port = read_local_settings(settings_file).host.get("LocalHttpPort")
        port = int(local_port) if local_port else 7071
    load_local_settings(settings_file)  # before the function app is imported
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))  # so --on-shutdown can name the app's own modules
    hooks = [*on_shutdown, *(_import_hook(spec) for spec in args.on_shutdown)]
    serve(
        port=port,
        host=args.host,
        app_dir=app_dir,
        module=args.module,
        log_level=args.log_level,
        function_key=args.function_key,
        on_shutdown=hooks,
    )
    return 0
