"""Timer triggers: NCRONTAB schedules (``%SETTING%`` expanded), run in asyncio tasks on the server's loop.

:func:`timer_function` turns a ``timerTrigger`` binding into a :class:`TimerFunction`, expanding app-setting
references in the schedule and parsing it with :mod:`localdev.ncrontab`; a missing setting or a bad schedule
is a :class:`~localdev.host.loading.HostConfigError` when the host is built, not when the timer is due.

:func:`timer_loop` is one timer's task: it runs the function at start-up when ``run_on_startup`` is set, then
at each occurrence of the schedule, re-reading the wall clock at least every minute, and marks an invocation
past due when it starts more than a second late. :func:`run_timer` runs one invocation with a
``TimerRequest`` like the Functions host passes (``past_due``, ``schedule_status``); the local host also
uses it for ``LocalHost.trigger_timer`` and ``POST /admin/functions/{name}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.functions.timer import TimerRequest

from localdev import ncrontab
from localdev.host.functions import call_function, invocation_kwargs
from localdev.host.loading import HostConfigError, expand_settings

__all__ = ["TimerFunction", "TimerFunctionInfo", "run_timer", "timer_function", "timer_loop"]

logger = logging.getLogger("localdev.host")  # one logger for the whole host, as before it was a package


@dataclass(frozen=True)
class TimerFunctionInfo:
    """A timer-triggered function as the host runs it (``LocalHost.timer_functions()``)."""

    name: str
    schedule: str  # %SETTING% references expanded
    raw_schedule: str
    run_on_startup: bool
    arg_name: str


@dataclass
class TimerFunction:
    """The host's entry for a timer function: its parsed schedule and when it last ran (``Last`` in its status)."""

    info: TimerFunctionInfo
    schedule: ncrontab.Schedule
    user_function: Callable[..., Any]
    wants_context: bool = False
    last: datetime | None = None


def timer_function(
    name: str,
    trigger: Mapping[str, Any],
    arg_name: str,
    user_function: Callable[..., Any],
    wants_context: bool,
    environ: Mapping[str, str],
) -> TimerFunction:
    """The timer function ``name`` of the ``timerTrigger`` binding ``trigger``, its schedule expanded and parsed."""
    raw = str(trigger.get("schedule") or "")
    what = f"timer function {name!r} schedule {raw!r}"
    expanded = expand_settings(raw, environ, what=what)
    try:
        schedule = ncrontab.parse(expanded)
    except ValueError as exc:
        raise HostConfigError(f"{what}: {exc}") from None
    run_on_startup = bool(trigger.get("runOnStartup") or False)
    timer_info = TimerFunctionInfo(name, expanded, raw, run_on_startup, arg_name)
    return TimerFunction(timer_info, schedule, user_function, wants_context)


async def run_timer(timer: TimerFunction, *, past_due: bool, propagate: bool) -> None:
    """One invocation of ``timer`` now; its exception propagates when ``propagate``, else it is logged."""
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
        kwargs = invocation_kwargs(timer.info.name, timer.info.arg_name, request, timer.wants_context)
        await call_function(timer.user_function, kwargs)
    except Exception:
        if propagate:
            raise
        logger.exception("Timer function %s failed", timer.info.name)


async def timer_loop(timer: TimerFunction) -> None:
    """Run ``timer`` on its schedule until cancelled (first at start-up when it says ``runOnStartup``)."""
    if timer.info.run_on_startup:
        await run_timer(timer, past_due=False, propagate=False)
    after = datetime.now(UTC)
    while True:
        due = timer.schedule.next_after(after)
        while True:
            remaining = (due - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 60.0))  # re-check the wall clock at least every minute
        late = (datetime.now(UTC) - due).total_seconds()
        await run_timer(timer, past_due=late > 1.0, propagate=False)
        after = max(due, datetime.now(UTC))
