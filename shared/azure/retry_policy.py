"""azure-core's face of the one retry schedule (``shared.azure.retry``): the policy every azure-core pipeline of
the service is built with. It imports azure-core, so only ``shared.azure.clients`` imports it, inside the methods
that build SDK clients: a read, which goes through ``shared.azure.rest``, never loads it."""

from __future__ import annotations

import random
from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import AsyncRetryPolicy

from shared.azure.retry import (
    ALWAYS_RETRIED,
    BACKOFF_FACTOR,
    BACKOFF_MAX,
    RETRY_BUDGET,
    RETRY_TOTAL,
    backoff,
    log,
    past_deadline,
    retry_after_of,
    retry_delay,
)

RETRIED_IF_SAFE = frozenset({408, 500, 502, 504})  # retried where the method may be sent again (azure-core's rules)
# The request option (``send_request(request, single_use=True)``) of a request that must not be processed twice.
SINGLE_USE = "single_use"


class JitteredRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
    """azure-core's retry policy on the service's schedule (see the module's docstring).

    ``retry_budget`` (seconds) may be given like azure-core's own keywords; ``retry_connect``,
    ``retry_read`` and ``retry_status`` default to ``retry_total``."""

    def __init__(self, **kwargs: Any) -> None:
        total = kwargs.setdefault("retry_total", RETRY_TOTAL)
        for count in ("retry_connect", "retry_read", "retry_status"):
            kwargs.setdefault(count, total)
        kwargs.setdefault("retry_backoff_factor", BACKOFF_FACTOR)
        kwargs.setdefault("retry_backoff_max", BACKOFF_MAX)
        self.retry_budget = float(kwargs.pop("retry_budget", RETRY_BUDGET))
        self.rng: random.Random | None = kwargs.pop("retry_rng", None)
        super().__init__(**kwargs)

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = super().configure_retries(options)
        settings["retries"] = 0  # made so far
        settings["waited"] = 0.0  # seconds, between attempts so far
        settings["delay"] = 0.0  # the wait before the next retry, chosen by increment()
        # A request that must not be processed twice (an authorization code is single use): its 5xx may come after
        # the work was done, so only an answer that says it was not (429 or 503 with a wait) is retried.
        settings["single_use"] = bool(options.pop(SINGLE_USE, False))
        return settings

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return backoff(max(1, len(settings["history"])), self.rng)

    def increment(self, settings: dict[str, Any], response: Any = None, error: Exception | None = None) -> bool:
        """azure-core's counting, then the wait is chosen here, once, and the retry is refused if it would
        take the waiting past the budget."""
        answer = response if isinstance(response, PipelineResponse) else None
        if not super().increment(settings, response=response, error=error):
            _gave_up(getattr(response, "http_request", None), settings["retries"] + 1, settings["waited"],
                     error, answer, "no retries left")
            return False
        retry_after = _retry_after(answer) if answer is not None else None
        delay = retry_delay(settings["retries"] + 1, retry_after, self.rng)
        if settings["waited"] + delay > self.retry_budget:
            _gave_up(getattr(response, "http_request", None), settings["retries"] + 1, settings["waited"],
                     error, answer, f"the next wait ({delay:.1f} s) would pass the {self.retry_budget:.0f} s budget")
            return False
        late = past_deadline(delay)
        if late is not None:
            _gave_up(getattr(response, "http_request", None), settings["retries"] + 1, settings["waited"],
                     error, answer, late)
            return False
        settings["retries"] += 1
        settings["waited"] += delay
        settings["delay"] = delay
        return True

    async def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        """Wait what :meth:`increment` chose (it already took ``Retry-After`` into account)."""
        delay = float(settings.get("delay") or 0.0)
        settings["delay"] = 0.0
        if delay > 0:
            await transport.sleep(delay)

    def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
        """Only what the schedule retries: 429 and 503 for every method, 408, 500, 502 and 504 where the method
        may be sent again. Not azure-core's rule that retries any 4xx or 5xx carrying ``Retry-After`` (a 400, 404
        or 409 is the same the next time) nor its 505 to 998."""
        status = response.http_response.status_code
        if not settings["total"] or (status not in ALWAYS_RETRIED and status not in RETRIED_IF_SAFE):
            return False
        if settings.get("single_use"):
            return status in ALWAYS_RETRIED and _retry_after(response) is not None
        return status in ALWAYS_RETRIED or self._is_method_retryable(settings, response.http_request,
                                                                     response=response.http_response)

    def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
        if response is not None and response.status_code in ALWAYS_RETRIED:
            return True
        if response is None and _unconditional_patch(request):
            return True
        return bool(super()._is_method_retryable(settings, request, response=response))


def _retry_after(answer: Any) -> float | None:
    """The answer's wait (``shared.azure.retry.retry_after_of``; azure-core's own parser raises on a malformed
    ``Retry-After``, which would fail the call)."""
    return retry_after_of({str(name).lower(): str(value) for name, value in answer.http_response.headers.items()})


def _gave_up(request: Any, attempts: int, waited: float, error: Exception | None, answer: Any, why: str) -> None:
    """One line for a call whose retryable failure stays unfixed (what a 5xx of the service is traced to)."""
    what = f"{getattr(request, 'method', '?')} {str(getattr(request, 'url', '?')).split('?', 1)[0]}"
    if answer is not None:
        outcome = f"answered {answer.http_response.status_code}"
    else:
        outcome = f"{type(error).__name__}" if error is not None else "failed"
    log.warning("%s %s after %d attempt(s) and %.1f s of waiting; giving up: %s", what, outcome, attempts, waited, why)


def _unconditional_patch(request: Any) -> bool:
    """A PATCH without ``If-Match`` that got no answer (the connection dropped) is safe to send again: the
    service's are Key Vault's ``update_secret_properties`` and Table upserts (merge), which set absolute
    values, so applying one twice is applying it once. azure-core retries only GET, HEAD, PUT, DELETE,
    OPTIONS and TRACE then. A conditional PATCH stays unretried: a retry of one that was applied would fail
    its ETag check (412) and be taken for a concurrent change. (A PATCH that is not absolute, e.g. a JSON
    Patch that appends, must not be sent through this policy without ``If-Match``.)"""
    if str(getattr(request, "method", "")).upper() != "PATCH":
        return False
    headers = getattr(request, "headers", None) or {}
    return not any(str(name).lower() == "if-match" for name in headers)


def retry_policy() -> JitteredRetryPolicy:
    return JitteredRetryPolicy()


class TablesRetryPolicy(JitteredRetryPolicy):
    """The one policy in the Tables SDK's pipeline, in place of the SDK's own: it takes from the request's options
    what that SDK's pipeline puts there for its retry policy alone (its hosts, the location mode: the service never
    retries against a secondary location), which would otherwise reach the transport."""

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        from azure.data.tables._models import LocationMode  # not exported; the SDK's own policy uses it

        for name in ("hosts", "retry_to_secondary"):
            options.pop(name, None)
        settings = super().configure_retries(options)
        settings["mode"] = options.pop("location_mode", LocationMode.PRIMARY)
        return settings

    def update_context(self, context: Any, retry_settings: dict[str, Any]) -> None:
        super().update_context(context, retry_settings)
        context["location_mode"] = retry_settings["mode"]  # the SDK reads it back from every response's context
