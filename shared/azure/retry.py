"""The one retry policy every Azure SDK call of the service goes through.

azure-core's policy already honours ``Retry-After`` on any 4xx/5xx and backs off
exponentially; this one adds jitter (so that many workers throttled together do not
come back together) and retries throttling (429) and unavailability (503) for every
method, since a throttled request was not processed.
"""

from __future__ import annotations

import random
from typing import Any

from azure.core.pipeline.policies import AsyncRetryPolicy

RETRY_TOTAL = 5
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 30
ALWAYS_RETRIED = frozenset({429, 503})


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
        return bool(super()._is_method_retryable(settings, request, response=response))


def retry_policy() -> JitteredRetryPolicy:
    return JitteredRetryPolicy()
