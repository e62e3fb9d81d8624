"""The one retry policy every Azure SDK call of the service goes through.

azure-core's policy already honours ``Retry-After`` on any 4xx/5xx and backs off
exponentially; this one adds jitter (so that many workers throttled together do not
come back together) and retries throttling (429) and unavailability (503) for every
method, since a throttled request was not processed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from azure.core.pipeline.policies import AsyncRetryPolicy

RETRY_TOTAL = 5
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 30
ALWAYS_RETRIED = frozenset({429, 503})
T = TypeVar("T")


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """Equal jitter: half the delay fixed, half random, so waits never collapse to zero."""
    if delay <= 0:
        return 0.0
    return delay / 2 + (rng or random).uniform(0, delay / 2)


class JitteredRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("retry_total", RETRY_TOTAL)
        kwargs.setdefault("retry_backoff_factor", BACKOFF_FACTOR)
        kwargs.setdefault("retry_backoff_max", BACKOFF_MAX)
        super().__init__(**kwargs)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return jittered(super().get_backoff_time(settings))

    def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
        if response is not None and response.status_code in ALWAYS_RETRIED:
            return True
        if response is None and _unconditional_patch(request):
            return True
        return bool(super()._is_method_retryable(settings, request, response=response))


def _unconditional_patch(request: Any) -> bool:
    """A PATCH without ``If-Match`` that got no answer (the connection dropped) is safe to send again: it
    sets absolute values (Key Vault's secret properties, a Table upsert), so applying it twice is applying
    it once. azure-core retries only GET, HEAD, PUT, DELETE, OPTIONS and TRACE then; a conditional PATCH
    stays unretried, since a retry of one that was applied would fail its ETag check."""
    if str(getattr(request, "method", "")).upper() != "PATCH":
        return False
    headers = getattr(request, "headers", None) or {}
    return not any(str(name).lower() == "if-match" for name in headers)


def retry_policy() -> JitteredRetryPolicy:
    return JitteredRetryPolicy()


class RetryableError(Exception):
    """A failure worth another try; ``retry_after`` is the server's wish, in seconds, if it said one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - time.time())


async def with_retries(
    call: Callable[[], Awaitable[T]],
    classify: Callable[[Exception], RetryableError | None],
    *,
    attempts: int = RETRY_TOTAL + 1,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Run ``call``, retrying what ``classify`` calls retryable: Retry-After when given (never sooner),
    otherwise exponential back-off with jitter, as the SDK pipelines do."""
    import asyncio

    pause = sleep or asyncio.sleep
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as error:
            retryable = classify(error)
            if retryable is None or attempt == attempts:
                raise
            if retryable.retry_after is not None:
                delay = retryable.retry_after
            else:
                delay = jittered(min(BACKOFF_MAX, BACKOFF_FACTOR * 2 ** (attempt - 1)) * 2)
            await pause(delay)
    raise AssertionError("unreachable")
