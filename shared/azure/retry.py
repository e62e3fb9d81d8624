"""The one retry policy every Azure call of the service goes through.

Three faces of one schedule: ``JitteredRetryPolicy`` (``shared.azure.retry_policy``, imported only where an
azure-core pipeline is built) for the azure-core pipelines (most Table Storage writes, Key Vault, Entra ID through
azure-identity, the OAuth token endpoint); :func:`with_retries` for Microsoft Graph (msgraph/httpx); and the
lean client of the read path (``shared.azure.rest``: Table Storage reads, and single-entity inserts and deletes,
without the SDK). This module, the
schedule itself, imports no SDK, so a read imports neither azure-core nor aiohttp. All three:

- retry up to ``RETRY_TOTAL`` times (azure-core's own default), whatever the mix of failures: azure-core
  also stops after 3 connection, 3 read or 3 status retries, which the storm's 30% of faults (half of
  them statuses, half dropped connections) exhaust in about one call of 500; here every count is
  ``RETRY_TOTAL``, and 11 faults in a row are needed (0.3^11: 2 calls in a million);
- wait with *full* jitter, ``uniform(0, min(BACKOFF_MAX, BACKOFF_FACTOR * 2**(n-1)))`` before the n-th
  retry, so that workers that failed together do not come back together;
- honour ``Retry-After`` (and ``retry-after-ms``): never sooner, at most ``RETRY_AFTER_SPREAD`` later;
- wait at most ``RETRY_BUDGET`` seconds in all: no retry is made whose wait would take the waiting past
  it (a ``Retry-After`` that reaches past it ends the retries at once, unwaited). The caller then gets the
  last answer or error, as it came: a 429/503 as an ``HttpResponseError`` with its status.

An HTTP request of the service must also be answered before Azure's front end gives up on it (230 s): while one
is served (:func:`answering_within`, set by ``shared.functions.http`` for every route), no retry is made that
would start past ``ANSWER_WITHIN`` seconds after it came in, so that an upstream that accepts and goes silent
(each attempt ending at a read timeout) gives the caller a problem, not the front end's bare 502 while the work
runs on unseen. The timers have no such deadline: their budgets and leases bound them. Work that waits in a loop
of its own (the test of a rotation's new credential) reads the time left with :func:`time_to_answer`.

The budget counts the waits between attempts, not the attempts: an attempt is bounded by the transport's
timeouts (``shared.azure.clients``: 60 s without a byte; Graph's httpx client: 30 s), and its time also
holds what the caller queued for, which must not turn into failures: the sweep paces its Graph requests
once Graph throttles, and a full connection pool makes a request wait. (With a budget of elapsed time, 4
rotations of 100 in a storm gave up after a single dropped connection each: the sweep's pacing had held
their Graph requests back for tens of seconds.) So a call takes at most ``RETRY_TOTAL + 1`` attempts plus
``RETRY_BUDGET`` seconds.

What is retried: throttling (429) and unavailability (503) for every method, since the request was not
processed; 500/502/504/408 and dropped connections for idempotent methods as azure-core decides (500,
503 and 504 also for POST and PATCH, as azure-core does), and a dropped ``PATCH`` without ``If-Match``
(see :func:`_unconditional_patch`). What is not: anything else (400, 401, 403, 404, 409, 412, ...), and
a ``POST`` whose connection dropped, since it may have been applied.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, copy_context
from datetime import UTC
from typing import Any, TypeVar

from shared.scoped import scoped

RETRY_TOTAL = 10  # retries after the first attempt
BACKOFF_FACTOR = 0.5  # seconds: the ceiling of the first retry's wait; it doubles with each retry ...
BACKOFF_MAX = 5.0  # ... up to this (ten retries then wait ~19 s on average, 37.5 s at most)
RETRY_BUDGET = 30.0  # seconds: the most a call waits between its attempts, in all
RETRY_AFTER_SPREAD = 0.1  # a Retry-After wait is lengthened by up to this share of it, never shortened
ANSWER_WITHIN = 150.0  # seconds: no retry starts later in an HTTP request (one more attempt, at most 60 s, fits)
ALWAYS_RETRIED = frozenset({429, 503})
T = TypeVar("T")
log = logging.getLogger(__name__)
# An HTTP request's deadline and the clock it is read on (time.monotonic), or None: no deadline.
_ANSWER_BY: ContextVar[tuple[float, Callable[[], float]] | None] = ContextVar("answer_by", default=None)


def answering_within(seconds: float = ANSWER_WITHIN,
                     clock: Callable[[], float] = time.monotonic) -> AbstractContextManager[None]:
    """The running task (an HTTP request) must be answered within ``seconds``: no retry starts past that."""
    return scoped(_ANSWER_BY, (clock() + seconds, clock))


def shared_task(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task of work several callers wait for, or none (run behind the requests), started by one of them: it runs
    without that caller's deadline (:func:`answering_within`), which would stop its retries for every waiter, and
    each waiter waits within its own (:func:`waited`)."""
    context = copy_context()
    context.run(_ANSWER_BY.set, None)
    return asyncio.get_running_loop().create_task(work, context=context)


async def waited(task: asyncio.Task[T], late: Callable[[], Exception]) -> T:
    """The result of a :func:`shared_task`, waited for within the caller's deadline (``late()`` is raised once it is
    reached; none outside a request). A caller cancelled or out of time leaves the task to the others."""
    left = time_to_answer()
    if left is None:
        return await asyncio.shield(task)
    try:
        return await asyncio.wait_for(asyncio.shield(task), max(left, 0.0))
    except TimeoutError:
        raise late() from None


def time_to_answer() -> float | None:
    """Seconds left before the HTTP request being served reaches its deadline (:func:`answering_within`; below zero
    once past it), or None outside one (a timer: no deadline). For work that waits in a loop of its own rather than
    through a retry (a new credential's test): it stops with room left for what follows it."""
    deadline = _ANSWER_BY.get()
    return None if deadline is None else deadline[0] - deadline[1]()


def past_deadline(delay: float) -> str | None:
    """Why a retry after ``delay`` seconds may not be made (it would start past the request's deadline), or None."""
    left = time_to_answer()
    if left is None or delay <= left:
        return None
    return "the request must be answered before its deadline (ANSWER_WITHIN)"


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """Equal jitter: half the delay fixed, half random, so waits never collapse to zero (for polling)."""
    if delay <= 0:
        return 0.0
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def backoff(retry: int, rng: random.Random | None = None) -> float:
    """Full jitter: the wait before the ``retry``-th retry (1, 2, ...), anywhere from 0 to its ceiling."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FACTOR * 2 ** (max(1, retry) - 1))
    return (rng or random).uniform(0, ceiling)


def retry_delay(retry: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """The wait before the ``retry``-th retry: ``Retry-After`` when the server gave one (never sooner),
    otherwise :func:`backoff`."""
    if retry_after is not None and retry_after > 0:
        return retry_after + (rng or random).uniform(0, retry_after * RETRY_AFTER_SPREAD)
    return backoff(retry, rng)


class RetryableError(Exception):
    """A failure worth another try; ``retry_after`` is the server's wish, in seconds, if it said one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` value's wait in seconds (never below 0): delay-seconds, or an HTTP-date, which is GMT in
    each of its three forms (RFC 9110 5.6.7), asctime's too though it names no zone; None when unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None  # "1e400", "nan": unreadable
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # asctime's form (and "-0000"): GMT all the same, not the host's time zone
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):  # not a date, or one past what a datetime holds
        return None


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """An answer's wait, in seconds, from its headers (names in lower case): ``Retry-After`` (seconds or an HTTP
    date), else ``retry-after-ms`` or ``x-ms-retry-after-ms``, as azure-core reads them; None when absent or
    unreadable (a malformed value must not fail the call: it is backed off from)."""
    seconds = parse_retry_after(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        try:
            milliseconds = float(headers[name])
        except (KeyError, ValueError):
            continue
        if math.isfinite(milliseconds):
            return max(0.0, milliseconds) / 1000.0
    return None


async def with_retries(
    call: Callable[[], Awaitable[T]],
    classify: Callable[[Exception], RetryableError | None],
    *,
    attempts: int = RETRY_TOTAL + 1,
    budget: float = RETRY_BUDGET,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    rng: random.Random | None = None,
    what: str = "A Microsoft Graph call",
) -> T:
    """Run ``call``, retrying what ``classify`` calls retryable, on the schedule of
    ``JitteredRetryPolicy``: at most ``attempts`` in all and ``budget`` seconds of waiting between
    them, ``Retry-After`` honoured (never sooner), full-jitter back-off otherwise. What is not retryable,
    or no longer, is raised as it came."""
    pause = sleep or asyncio.sleep
    waited = 0.0
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as error:
            retryable = classify(error)
            if retryable is None:
                raise
            if attempt == attempts:
                _log_give_up(what, error, attempt, waited, "no retries left")
                raise
            delay = retry_delay(attempt, retryable.retry_after, rng)
            if waited + delay > budget:
                _log_give_up(what, error, attempt, waited, f"the next wait ({delay:.1f} s) would pass the "
                                                           f"{budget:.0f} s budget")
                raise
            late = past_deadline(delay)
            if late is not None:
                _log_give_up(what, error, attempt, waited, late)
                raise
            waited += delay
            await pause(delay)
    raise AssertionError("unreachable")


def _log_give_up(what: str, error: Exception, attempts: int, waited: float, why: str) -> None:
    log.warning("%s failed (%s: %s) after %d attempt(s) and %.1f s of waiting; giving up: %s",
                what, type(error).__name__, str(error)[:200], attempts, waited, why)
