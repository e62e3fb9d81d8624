"""One retry policy: Retry-After is honoured (never sooner), otherwise back-off with jitter."""

import random

import httpx
import pytest

from shared.azure.graph import classify, translate
from shared.azure.retry import (
    BACKOFF_FACTOR,
    JitteredRetryPolicy,
    RetryableError,
    jittered,
    parse_retry_after,
    with_retries,
)
from shared.errors import NotFound, UpstreamError, UpstreamForbidden


class FakeGraphError(Exception):
    def __init__(self, status: int, code: str = "", message: str = "", headers: dict | None = None) -> None:
        super().__init__(message)
        self.response_status_code = status
        self.response_headers = headers or {}
        self.error = type("E", (), {"code": code, "message": message})()


def test_jitter_stays_between_half_and_the_full_delay():
    rng = random.Random(7)
    values = [jittered(4.0, rng) for _ in range(200)]
    assert min(values) >= 2.0 and max(values) <= 4.0 and len(set(values)) > 100
    assert jittered(0) == 0


@pytest.mark.parametrize(("raw", "seconds"), [("2", 2.0), ("0", 0.0), ("-3", 0.0), ("soon", None), (None, None)])
def test_retry_after_in_seconds(raw, seconds):
    assert parse_retry_after(raw) == seconds


def test_retry_after_as_an_http_date_in_the_past_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_retry_after_is_waited_exactly_and_backoff_grows_otherwise():
    slept: list[float] = []
    failures = iter([RetryableError("throttled", retry_after=2.0), RetryableError("busy"), RetryableError("busy")])

    async def call() -> str:
        error = next(failures, None)
        if error:
            raise error
        return "done"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await with_retries(call, lambda e: e if isinstance(e, RetryableError) else None, sleep=sleep) == "done"
    assert slept[0] == 2.0
    assert slept[1] * 2 >= BACKOFF_FACTOR * 2 and slept[2] >= slept[1] / 2  # jittered exponential
    assert len(slept) == 3


async def test_what_is_not_retryable_is_raised_at_once():
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("no")

    with pytest.raises(ValueError):
        await with_retries(call, lambda e: None)
    assert calls == 1


async def test_retries_end_with_the_last_error():
    async def call() -> None:
        raise RetryableError("always")

    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(RetryableError):
        await with_retries(call, lambda e: e if isinstance(e, RetryableError) else None, attempts=3, sleep=sleep)


@pytest.mark.parametrize(
    ("error", "retryable", "after"),
    [
        (FakeGraphError(429, "TooManyRequests", headers={"Retry-After": "2"}), True, 2.0),
        (FakeGraphError(503, headers={"retry-after": "1"}), True, 1.0),
        (FakeGraphError(500), True, None),
        (FakeGraphError(409, "Directory_ConcurrencyViolation", "Error due to concurrent requests"), True, None),
        (FakeGraphError(400, "Request_BadRequest", "Unable to complete: concurrent requests"), True, None),
        (FakeGraphError(400, "Request_BadRequest", "Invalid keyId"), False, None),
        (FakeGraphError(403, "Authorization_RequestDenied"), False, None),
        (httpx.ConnectError("refused"), True, None),
    ],
)
def test_graph_failures_are_sorted_into_retryable_or_not(error, retryable, after):
    verdict = classify(error)
    assert (verdict is not None) == retryable
    if verdict is not None:
        assert verdict.retry_after == after


def test_graph_failures_that_remain_become_clear_domain_errors():
    forbidden = translate(FakeGraphError(403, "Authorization_RequestDenied"), "add a client secret")
    assert isinstance(forbidden, UpstreamForbidden)
    assert "Application.ReadWrite.OwnedBy" in forbidden.detail and "owner" in forbidden.detail
    assert isinstance(translate(FakeGraphError(404, "Request_ResourceNotFound"), "read"), NotFound)
    assert isinstance(translate(FakeGraphError(502), "read"), UpstreamError)


def test_sdk_policy_retries_throttling_for_every_method():
    policy = JitteredRetryPolicy()
    post = type("R", (), {"method": "POST"})()
    settings = policy.configure_retries({})
    assert policy._is_method_retryable(settings, post, response=type("S", (), {"status_code": 429})())
    assert not policy._is_method_retryable(settings, post, response=type("S", (), {"status_code": 502})())
