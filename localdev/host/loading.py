"""Finding and loading the function app, and the host configuration the local host reads.

* :func:`load_function_app` imports a module (``function_app`` by default) from the app directory and
  returns its ``azure.functions.FunctionApp``: the attribute ``app``, else the module's only FunctionApp.
  :func:`load_function_app_file` executes a Python file as a fresh module instead (tests load sample apps so).
* :func:`index_functions` is ``app.get_functions()``, called once per app: the Functions library refuses to
  index the same app twice.
* :func:`read_route_prefix` reads ``extensions.http.routePrefix`` from host.json (default ``api``).
* :func:`expand_settings` expands ``%SETTING%`` references (timer schedules) from the app settings.

Anything that cannot be served raises :class:`HostConfigError` with a message naming the cause.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import threading
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import azure.functions as func
from azure.functions.decorators.function_app import Function

__all__ = [
    "DEFAULT_ROUTE_PREFIX",
    "HostConfigError",
    "expand_settings",
    "index_functions",
    "load_function_app",
    "load_function_app_file",
    "read_route_prefix",
]

DEFAULT_ROUTE_PREFIX = "api"

_SETTING_REF = re.compile(r"%([^%\s]+)%")


class HostConfigError(RuntimeError):
    """The function app or host configuration cannot be served (missing setting, bad schedule, ...)."""


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


def expand_settings(text: str, environ: Mapping[str, str], *, what: str) -> str:
    """Replace each ``%NAME%`` in ``text`` with the app setting (environment variable) ``NAME``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise HostConfigError(f"{what}: app setting {name!r} (referenced as %{name}%) is not set")
        return environ[name]

    return _SETTING_REF.sub(replace, text)
