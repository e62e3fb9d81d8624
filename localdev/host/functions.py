"""What the local host needs to know about each indexed function, and how it calls one.

* :func:`function_bindings` and :func:`trigger_binding` read a function's bindings as the Functions library
  describes them (``function.json`` style dicts); :func:`enum_text` turns their enum values into text.
* :func:`check_parameters` fails like the Python worker when the Python parameters and the bindings disagree,
  and says whether the function also takes ``context``.
* :func:`call_function` runs an invocation: ``async def`` functions on the server's event loop, plain ones in
  a worker thread; :func:`invocation_kwargs` builds its arguments, with an :class:`InvocationContext`.
* :class:`OtherFunction` is a function whose trigger the local host does not run (queue, blob, ...); it can
  still be started with ``POST /admin/functions/{name}``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from azure.functions.decorators.function_app import Function

from localdev.host.loading import HostConfigError

__all__ = [
    "InvocationContext",
    "OtherFunction",
    "TraceContext",
    "call_function",
    "check_parameters",
    "enum_text",
    "function_bindings",
    "invocation_kwargs",
    "trigger_binding",
]


def enum_text(value: object) -> str:
    """A binding value as text: an enum's value (``HttpMethod.GET`` -> ``GET``), anything else as is."""
    return str(value.value if isinstance(value, Enum) else value)


@dataclass
class OtherFunction:
    """A function whose trigger the local host does not run; only ``POST /admin/functions/{name}`` starts it."""

    name: str
    trigger_type: str
    arg_name: str
    user_function: Callable[..., Any]
    wants_context: bool = False


def function_bindings(function: Function) -> list[dict[str, Any]]:
    """The function's bindings (trigger, inputs, outputs) as ``function.json`` dicts."""
    bindings = function.get_dict_repr().get("bindings", [])
    return [binding for binding in bindings if isinstance(binding, dict)]


def trigger_binding(function: Function) -> dict[str, Any]:
    """The function's trigger binding (the one whose type ends in ``Trigger``)."""
    for binding in function_bindings(function):
        if str(binding.get("type", "")).endswith("Trigger"):
            return binding
    raise HostConfigError(f"function {function.get_function_name()} has no trigger binding")


def check_parameters(name: str, user_function: Callable[..., Any], bindings: list[dict[str, Any]]) -> bool:
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
class TraceContext:
    """The W3C trace context of an invocation (``func.TraceContext``). The real host gives its own span, a
    child of the caller's; the local host has no span of its own, so it gives the caller's ``traceparent``."""

    trace_parent: str
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InvocationContext:
    """What a function that declares a ``context`` parameter receives (a subset of ``func.Context``)."""

    invocation_id: str
    function_name: str
    function_directory: str
    trace_context: TraceContext | None = None
    retry_context: None = None
    thread_local_storage: threading.local = field(default_factory=threading.local)


def invocation_kwargs(name: str, arg_name: str, value: object, wants_context: bool,
                      trace_context: TraceContext | None = None) -> dict[str, Any]:
    """The keyword arguments of one invocation: the trigger value, and a fresh ``context`` when it takes one."""
    kwargs: dict[str, Any] = {arg_name: value}
    if wants_context:
        kwargs["context"] = InvocationContext(str(uuid.uuid4()), name, str(Path.cwd()), trace_context)
    return kwargs


async def call_function(user_function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Await ``async def`` functions on this loop; run plain functions in a worker thread."""
    if inspect.iscoroutinefunction(user_function):
        return await user_function(**kwargs)
    result = await asyncio.to_thread(user_function, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result
