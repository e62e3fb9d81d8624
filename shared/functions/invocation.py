"""What every function shares about its invocation: the ``context`` the worker passes, and the span of a timer.

The Functions worker passes ``context`` (a ``func.Context``: the invocation id and the host's W3C trace context)
only to a function that declares that parameter, which it reads through ``inspect.signature``.
:func:`accept_context` declares it on a wrapper (whose signature would otherwise be its handler's, through
``__wrapped__``); :func:`host_trace` reads the host's span from it; :func:`traced_timer` runs a timer function
inside a SERVER span under that host span, so a sweep and every rotation or check it runs is one trace.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func

from shared import telemetry

TimerHandler = Callable[[func.TimerRequest], Awaitable[None]]


def accept_context(wrapper: Callable[..., Any], handler: Callable[..., Any]) -> None:
    """Give ``wrapper`` its handler's parameters plus ``context: func.Context = None``."""
    signature = inspect.signature(handler)
    parameters = list(signature.parameters.values())
    if "context" not in signature.parameters:
        parameters.append(inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                            annotation=func.Context))
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    # A fresh dict: functools.wraps shares the handler's.
    wrapper.__annotations__ = {**getattr(handler, "__annotations__", {}), "context": func.Context}


def host_trace(context: func.Context | None) -> tuple[str | None, str | None]:
    """The host's span of this invocation as (traceparent, tracestate), or (None, None) without one."""
    trace_context = getattr(context, "trace_context", None)
    traceparent = getattr(trace_context, "trace_parent", None)
    if not traceparent:
        return None, None
    return str(traceparent), str(getattr(trace_context, "trace_state", None) or "") or None


def traced_timer(handler: TimerHandler) -> TimerHandler:
    """Run a timer function inside its invocation's SERVER span (``faas.trigger=timer``), a child of the
    host's span; ``past_due`` says whether the run is late."""

    @functools.wraps(handler)
    async def wrapper(timer: func.TimerRequest, context: func.Context | None = None) -> None:
        traceparent, tracestate = host_trace(context)
        attributes = {"faas.trigger": "timer", "faas.name": handler.__name__,
                      "faas.invocation_id": getattr(context, "invocation_id", None),
                      "timer.past_due": bool(getattr(timer, "past_due", False))}
        with telemetry.server_span(handler.__name__, attributes, traceparent=traceparent, tracestate=tracestate):
            await handler(timer)

    accept_context(wrapper, handler)
    return wrapper
