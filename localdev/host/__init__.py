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

Modules (every public name is re-exported here, so ``from localdev.host import LocalHost`` works):

* ``loading``   finding and importing the FunctionApp, indexing it once, host.json's route prefix,
  ``%SETTING%`` expansion, :class:`HostConfigError`
* ``routes``    :class:`RouteTemplate` (parameters, constraints, precedence) and the HTTP function entries
* ``functions`` reading bindings, checking parameters, calling a function (:class:`InvocationContext`)
* ``timers``    timer functions: schedules, the per-timer task, one invocation
* ``asgi``      :class:`LocalHost`, the ASGI application: lifespan, dispatch, admin routes, problems
* ``cli``       :func:`serve`, :func:`run_in_thread`, :func:`build_local_host` and ``python -m localdev host``
"""

from __future__ import annotations

from localdev.host.asgi import DEFAULT_MAX_BODY_BYTES, FUNCTION_KEY_ENV, LocalHost, ShutdownHook
from localdev.host.cli import build_local_host, main, run_in_thread, serve
from localdev.host.functions import InvocationContext
from localdev.host.loading import (
    HostConfigError,
    expand_settings,
    index_functions,
    load_function_app,
    load_function_app_file,
    read_route_prefix,
)
from localdev.host.routes import HttpFunctionInfo, RouteTemplate
from localdev.host.timers import TimerFunctionInfo

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FUNCTION_KEY_ENV",
    "HostConfigError",
    "HttpFunctionInfo",
    "InvocationContext",
    "LocalHost",
    "RouteTemplate",
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
