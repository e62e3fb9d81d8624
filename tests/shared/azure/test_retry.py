"""One retry policy: Retry-After is honoured (never sooner), otherwise full-jitter back-off; up to
``RETRY_TOTAL`` retries whatever the mix of failures, within ``RETRY_BUDGET`` seconds; what cannot be
retried is raised at once, as it came."""

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest

from shared.azure.graph import GraphCallError, classify, translate
from shared.azure.retry import (
    BACKOFF_FACTOR,
    BACKOFF_MAX,
    RETRY_AFTER_SPREAD,
    RETRY_BUDGET,
    RETRY_TOTAL,
    RetryableError,
    answering_within,
    backoff,
    jittered,
    parse_retry_after,
    past_deadline,
    retry_delay,
    time_to_answer,
    with_retries,
)
from shared.azure.retry_policy import JitteredRetryPolicy, retry_policy
from shared.errors import CredentialLimitReached, NotFound, UpstreamError, UpstreamForbidden


class FakeGraphError(Exception):
    def __init__(self, status: int, code: str = "", message: str = "", headers: dict | None = None) -> None:
        super().__init__(message)
        self.response_status_code = status
        self.response_headers = headers or {}
        self.error = type("E", (), {"code": code, "message": message})()


class Clock:
    """A clock that only the fake sleeps (and slow fake calls) move."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def retry_everything(error: Exception) -> RetryableError | None:
    return error if isinstance(error, RetryableError) else None


# -- the schedule ----------------------------------------------------------------------------------------------
def test_equal_jitter_for_polling_stays_between_half_and_the_full_delay():
    rng = random.Random(7)
    values = [jittered(4.0, rng) for _ in range(200)]
    assert min(values) >= 2.0 and max(values) <= 4.0 and len(set(values)) > 100
    assert jittered(0) == 0


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling():
    rng = random.Random(7)
    for retry in range(1, 12):
        ceiling = min(BACKOFF_MAX, BACKOFF_FACTOR * 2 ** (retry - 1))
        values = [backoff(retry, rng) for _ in range(400)]
        assert 0 <= min(values) < ceiling * 0.05  # full jitter: waits reach down to zero ...
        assert ceiling * 0.95 < max(values) <= ceiling  # ... and up to the ceiling
    assert max(backoff(50, rng) for _ in range(100)) <= BACKOFF_MAX


def test_retry_after_is_never_shortened_and_only_slightly_lengthened():
    rng = random.Random(3)
    waits = [retry_delay(1, 2.0, rng) for _ in range(300)]
    assert min(waits) >= 2.0 and max(waits) <= 2.0 * (1 + RETRY_AFTER_SPREAD) and len(set(waits)) > 100
    assert retry_delay(9, 0.0, rng) <= BACKOFF_MAX  # "Retry-After: 0" is the plain back-off
    assert retry_delay(1, None, rng) <= BACKOFF_FACTOR


@pytest.mark.parametrize(("raw", "seconds"), [
    ("2", 2.0), ("0", 0.0), ("-3", 0.0), ("soon", None), (None, None),
    ("1e400", None), ("inf", None), ("nan", None),  # not a wait (review E: inf held a sweep's Graph requests for ever)
    ("Mon, 01 Jan 2024 00:00:00 +99999999999999999999", None),  # a date past datetime's range: OverflowError
])
def test_retry_after_in_seconds(raw, seconds):
    assert parse_retry_after(raw) == seconds


def test_retry_after_as_an_http_date_in_the_past_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.fixture
def host_in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time zone five hours behind UTC (four in summer)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_retry_after_as_an_http_date_is_gmt_in_each_of_its_forms(host_in_new_york: None):
    """RFC 9110 5.6.7: IMF-fixdate, RFC 850's and asctime's forms are all GMT, though asctime's names no zone (it
    was read as the host's local time: a minute's wait became five hours)."""
    when = time.gmtime(time.time() + 60)
    forms = [time.strftime("%a, %d %b %Y %H:%M:%S GMT", when),
             time.strftime("%A, %d-%b-%y %H:%M:%S GMT", when),
             time.strftime("%a %b ", when) + f"{when.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", when)]
    for form in forms:
        assert parse_retry_after(form) == pytest.approx(60, abs=2), form


# -- with_retries (Microsoft Graph) ---------------------------------------------------------------------------
async def test_retry_after_is_waited_never_sooner_and_backoff_is_jittered_otherwise():
    clock = Clock()
    failures = iter([RetryableError("throttled", retry_after=2.0), RetryableError("busy"), RetryableError("busy")])

    async def call() -> str:
        error = next(failures, None)
        if error:
            raise error
        return "done"

    assert await with_retries(call, retry_everything, sleep=clock.sleep) == "done"
    assert len(clock.slept) == 3
    assert 2.0 <= clock.slept[0] <= 2.0 * (1 + RETRY_AFTER_SPREAD)
    assert 0 <= clock.slept[1] <= BACKOFF_FACTOR * 2 and 0 <= clock.slept[2] <= BACKOFF_FACTOR * 4


async def test_what_is_not_retryable_is_raised_at_once():
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("no")

    with pytest.raises(ValueError):
        await with_retries(call, lambda e: None)
    assert calls == 1


async def test_retries_end_with_the_last_error_after_retry_total_retries():
    clock = Clock()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise RetryableError(f"always ({calls})")

    with pytest.raises(RetryableError, match=rf"always \({RETRY_TOTAL + 1}\)"):
        await with_retries(call, retry_everything, sleep=clock.sleep, budget=300)
    assert calls == RETRY_TOTAL + 1


async def test_a_retry_after_beyond_the_budget_ends_the_retries_at_once():
    clock = Clock()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise RetryableError("throttled for long", retry_after=RETRY_BUDGET + 1)

    with pytest.raises(RetryableError, match="throttled for long"):
        await with_retries(call, retry_everything, sleep=clock.sleep)
    assert calls == 1 and clock.slept == []  # not retried sooner than asked, and not waited for in vain


async def test_in_an_http_request_no_retry_starts_past_its_deadline():
    """(Review W, 5.) An upstream that accepts and goes silent ends each attempt at a read timeout: eleven of them
    outlast Azure's front end (230 s), which then answers a bare 502 while the work runs on unseen. While a request
    is served, no retry starts past its deadline, and the caller gets the last error as it came."""
    clock = Clock()
    calls = 0

    async def silent() -> None:
        nonlocal calls
        calls += 1
        clock.now += 60  # a read timeout
        raise RetryableError("no answer within the read timeout")

    with answering_within(150, clock=clock), pytest.raises(RetryableError, match="no answer"):
        await with_retries(silent, retry_everything, sleep=clock.sleep, budget=300)
    assert calls == 3 and clock.now <= 150 + 60  # the third started before the deadline; no fourth
    calls, clock.now = 0, 0.0
    with pytest.raises(RetryableError):  # a timer has no deadline: its budget and attempts bound it
        await with_retries(silent, retry_everything, sleep=clock.sleep, budget=300)
    assert calls == RETRY_TOTAL + 1


async def test_the_waits_between_attempts_stay_within_the_budget():
    clock = Clock()
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise RetryableError("throttled", retry_after=7.0)

    with pytest.raises(RetryableError):
        await with_retries(call, retry_everything, sleep=clock.sleep, rng=random.Random(1))
    assert calls == len(clock.slept) + 1 and 3 <= len(clock.slept) <= 4  # 3 waits of 7-7.7 s fit in 30 s, 5 never
    assert sum(clock.slept) <= RETRY_BUDGET and all(wait >= 7.0 for wait in clock.slept)


async def test_time_spent_inside_attempts_does_not_use_up_the_budget():
    """An attempt may queue before it is sent (the sweep paces Graph requests once Graph throttles): that
    time is the caller's, and must not cut the retries short. Attempts are bounded by their timeouts."""
    clock = Clock()
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        clock.now += 20.0  # held back by pacing, then sent
        if calls < 5:
            raise RetryableError("dropped")
        return "done"

    assert await with_retries(call, retry_everything, sleep=clock.sleep) == "done"
    assert calls == 5 and clock.now >= 100.0


async def test_a_30_percent_fault_rate_practically_never_exhausts_the_retries():
    """The storm's weather, 20,000 calls: each attempt fails with probability 0.3 (a quarter of them 429 with
    Retry-After: 1, a quarter timeouts of 1.5 s). Six attempts (the old policy) would fail ~15 of them."""
    rng = random.Random(20240607)
    exhausted = 0
    longest = 0.0
    for _ in range(20_000):
        clock = Clock()

        async def call() -> str:
            draw = rng.random()
            if draw < 0.075:
                raise RetryableError("throttled", retry_after=1.0)
            if draw < 0.15:
                clock.now += 1.5
                raise RetryableError("timed out")
            if draw < 0.30:
                raise RetryableError("unavailable or dropped")
            return "ok"

        try:
            await with_retries(call, retry_everything, sleep=clock.sleep, rng=rng)
        except RetryableError:
            exhausted += 1
        longest = max(longest, clock.now)
    assert exhausted == 0
    assert longest <= RETRY_BUDGET + (RETRY_TOTAL + 1) * 1.5


# -- Graph's classification ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "retryable", "after"),
    [
        (FakeGraphError(429, "TooManyRequests", headers={"Retry-After": "2"}), True, 2.0),
        (FakeGraphError(503, headers={"retry-after": "1"}), True, 1.0),
        (FakeGraphError(500), True, None),
        # a 502 where the method may be sent again, not for a POST or PATCH (which may have been applied), as azure-core
        (GraphCallError(502, {}, "", "", "GET"), True, None),
        (GraphCallError(502, {}, "", "", "DELETE"), True, None),
        (GraphCallError(502, {}, "", "", "POST"), False, None),
        (GraphCallError(502, {}, "", "", "PATCH"), False, None),
        (GraphCallError(500, {}, "", "", "POST"), True, None),
        (GraphCallError(504, {}, "", "", "POST"), True, None),
        (FakeGraphError(409, "Directory_ConcurrencyViolation", "Error due to concurrent requests"), True, None),
        (FakeGraphError(400, "Request_BadRequest", "Unable to complete: concurrent requests"), True, None),
        (FakeGraphError(400, "Request_BadRequest", "Invalid keyId"), False, None),
        (FakeGraphError(403, "Authorization_RequestDenied"), False, None),
        (FakeGraphError(404, "Request_ResourceNotFound"), False, None),
        (httpx.ConnectError("refused"), True, None),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True, None),
        (httpx.ReadTimeout("timed out"), True, None),
        (ValueError("a bug"), False, None),
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
    assert isinstance(translate(httpx.ConnectError("refused"), "read"), UpstreamError)


def test_the_application_s_credential_limit_is_its_owner_s_to_fix_with_the_remedy():
    """Graph's 400 ``TooManyAppPasswords`` is the application's own state (400, as a refusal), not Azure failing
    (502): its detail says to remove unused client secrets, its code is ``graphCode``; Graph's text is not quoted."""
    limit = translate(FakeGraphError(400, "TooManyAppPasswords", "You can only add a maximum of 2 passwords."),
                      "add a client secret")
    assert isinstance(limit, CredentialLimitReached) and limit.status == 400
    assert limit.extensions == {"graphCode": "TooManyAppPasswords"}
    assert "Remove the application's unused client secrets" in limit.detail and "maximum" not in limit.detail
    # another 400 of addPassword stays Graph's failure
    assert type(translate(FakeGraphError(400, "Request_BadRequest"), "add a client secret")) is UpstreamError
    gone = translate(FakeGraphError(404, "Request_ResourceNotFound"), "read the app registration")
    assert isinstance(gone, NotFound) and gone.extensions == {"graphCode": "Request_ResourceNotFound"}


# -- JitteredRetryPolicy (azure-core pipelines) ----------------------------------------------------------------
class Answer:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}
        self.reason = "fake"


class FakeTransport(AsyncHttpTransport):
    """Answers (or fails) each attempt as ``script`` says; its sleeps move ``clock``, they do not wait."""

    def __init__(self, script: Callable[[int], Any], clock: Clock) -> None:
        self.script = script
        self.clock = clock
        self.sent: list[tuple[str, float]] = []

    async def send(self, request: Any, **kwargs: Any) -> Any:
        self.sent.append((request.method, self.clock.now))
        outcome = self.script(len(self.sent))
        if isinstance(outcome, Exception):
            raise outcome
        return Answer(*outcome) if isinstance(outcome, tuple) else Answer(outcome)

    async def sleep(self, duration: float) -> None:
        await self.clock.sleep(duration)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __aexit__(self, *args: Any) -> None:
        return None


def pipeline_for(script: Callable[[int], Any], **policy: Any) -> tuple[AsyncPipeline, FakeTransport, Clock]:
    clock = Clock()
    transport = FakeTransport(script, clock)
    retry = JitteredRetryPolicy(retry_rng=random.Random(5), **policy)
    return AsyncPipeline(transport, policies=[retry]), transport, clock


def failing(times: int, fault: Callable[[], Any]) -> Callable[[int], Any]:
    return lambda attempt: fault() if attempt <= times else 200


async def test_sdk_policy_retries_ten_times_whatever_the_mix_of_failures():
    """azure-core's own counts stop after 3 connection, 3 read or 3 status failures; ours do not."""
    faults: Iterator[Any] = iter([503, ServiceRequestError("dropped"), 503, ServiceResponseError("reset"), 503,
                                  ServiceRequestError("dropped"), 503, ServiceRequestError("dropped"),
                                  ServiceResponseError("reset"), ServiceResponseError("reset")])
    pipeline, transport, _ = pipeline_for(lambda attempt: next(faults, 200), retry_budget=300)
    response = await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s/v"))
    assert response.http_response.status_code == 200
    assert len(transport.sent) == RETRY_TOTAL + 1


async def test_sdk_policy_gives_the_last_answer_when_retries_run_out():
    pipeline, transport, _ = pipeline_for(lambda attempt: 503, retry_budget=300)
    response = await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s/v"))
    assert response.http_response.status_code == 503  # the SDK turns it into an HttpResponseError with it
    assert len(transport.sent) == RETRY_TOTAL + 1


async def test_sdk_policy_honours_retry_after_for_every_method_and_never_sooner():
    pipeline, transport, _ = pipeline_for(failing(1, lambda: (429, {"Retry-After": "2"})))
    response = await pipeline.run(HttpRequest("POST", "https://tables.example/$batch"))
    assert response.http_response.status_code == 200
    (first, _), (second, at) = transport.sent
    assert first == second == "POST" and 2.0 <= at <= 2.0 * (1 + RETRY_AFTER_SPREAD)


async def test_sdk_policy_honours_retry_after_ms():
    pipeline, transport, _ = pipeline_for(failing(1, lambda: (503, {"retry-after-ms": "1500"})))
    await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))
    assert transport.sent[1][1] >= 1.5


def test_the_time_left_to_answer_a_request_is_read_on_its_clock_and_none_outside_one():
    """What a wait of its own (a new credential's test) reads to stop in time for the request's answer."""
    clock = Clock()
    assert time_to_answer() is None
    with answering_within(150, clock=clock):
        assert time_to_answer() == 150
        clock.now = 100.0
        assert time_to_answer() == 50 and past_deadline(50) is None and past_deadline(51) is not None
        clock.now = 160.0
        assert time_to_answer() == -10
    assert time_to_answer() is None


async def test_sdk_policy_does_not_wait_for_a_retry_after_beyond_its_budget():
    pipeline, transport, clock = pipeline_for(lambda attempt: (429, {"Retry-After": str(int(RETRY_BUDGET) + 5)}))
    response = await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))
    assert response.http_response.status_code == 429
    assert len(transport.sent) == 1 and clock.slept == []


async def test_sdk_policy_starts_no_retry_past_an_http_request_s_deadline():
    pipeline, transport, clock = pipeline_for(lambda attempt: (503, {"Retry-After": "7"}), retry_budget=300)
    with answering_within(20, clock=clock):
        response = await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))
    assert response.http_response.status_code == 503
    assert [at for _, at in transport.sent][-1] <= 20 and len(transport.sent) == 3  # at 0, ~7, ~14; not ~21


async def test_sdk_policy_waits_no_longer_than_its_budget():
    pipeline, transport, clock = pipeline_for(lambda attempt: (503, {"Retry-After": "7"}))
    response = await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))
    assert response.http_response.status_code == 503
    assert 1 < len(transport.sent) < RETRY_TOTAL + 1
    assert sum(clock.slept) <= RETRY_BUDGET and all(wait >= 7.0 for wait in clock.slept)


async def test_sdk_policy_does_not_count_time_spent_inside_attempts():
    def slow_drop(attempt: int) -> Any:
        clock.now += 20.0  # each attempt waits for a connection, then its connection drops
        return ServiceResponseError("timed out") if attempt < 5 else 200

    pipeline, transport, clock = pipeline_for(slow_drop)
    response = await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))
    assert response.http_response.status_code == 200 and len(transport.sent) == 5


async def test_giving_up_is_logged_with_the_call_and_the_reason(caplog):
    pipeline, _, _ = pipeline_for(lambda attempt: ServiceRequestError("Server disconnected"), retry_budget=300)
    with pytest.raises(ServiceRequestError), caplog.at_level("WARNING", logger="shared.azure.retry"):
        await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s?api-version=1"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "shared.azure.retry"]
    assert line.startswith("GET https://vault.example/secrets/s ServiceRequestError after 11 attempt(s)")
    assert "no retries left" in line


async def test_sdk_policy_waits_with_full_jitter_between_failures():
    pipeline, _, clock = pipeline_for(failing(6, lambda: 503))
    await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))
    assert len(clock.slept) == 6
    for retry, waited in enumerate(clock.slept, start=1):
        assert 0 <= waited <= min(BACKOFF_MAX, BACKOFF_FACTOR * 2 ** (retry - 1))


async def test_sdk_policy_retries_throttling_for_every_method():
    policy = JitteredRetryPolicy()
    post = type("R", (), {"method": "POST"})()
    settings = policy.configure_retries({})
    assert policy._is_method_retryable(settings, post, response=type("S", (), {"status_code": 429})())
    assert not policy._is_method_retryable(settings, post, response=type("S", (), {"status_code": 502})())


@pytest.mark.parametrize(
    ("method", "headers", "retried"),
    [
        ("PATCH", {}, True),  # Key Vault update_secret_properties, a Table upsert (merge): absolute values
        ("PATCH", {"If-Match": 'W/"datetime\'2024-01-01T00%3A00%3A00Z\'"'}, False),  # would fail its ETag check
        ("PATCH", {"if-match": "*"}, False),
        ("POST", {}, False),  # a Table $batch or insert, a token request: may have been applied
        ("PUT", {}, True),  # azure-core's own choice
        ("GET", {}, True),
        ("DELETE", {}, True),
    ],
)
async def test_a_dropped_connection_is_retried_only_where_sending_again_is_safe(method, headers, retried):
    """The storm found it: Key Vault's ``update_secret_properties`` (PATCH) failed a rotation on a dropped
    connection, since azure-core retries only GET/HEAD/PUT/DELETE/OPTIONS/TRACE when no answer came."""
    pipeline, transport, _ = pipeline_for(failing(1, lambda: ServiceRequestError("Server disconnected")))
    request = HttpRequest(method, "https://upstream.example/x", headers=headers, json={"enabled": False})
    if retried:
        assert (await pipeline.run(request)).http_response.status_code == 200
        assert len(transport.sent) == 2
    else:
        with pytest.raises(ServiceRequestError):
            await pipeline.run(request)
        assert len(transport.sent) == 1


async def test_the_token_request_of_azure_identity_is_retried_when_dropped():
    """azure-identity sends its POST to the token endpoint with ``retry_on_methods`` naming POST."""
    pipeline, transport, _ = pipeline_for(failing(4, lambda: ServiceRequestError("Server disconnected")))
    response = await pipeline.run(HttpRequest("POST", "https://login.example/t/oauth2/v2.0/token"),
                                  retry_on_methods=frozenset({"POST"}))
    assert response.http_response.status_code == 200 and len(transport.sent) == 5


async def test_a_30_percent_fault_rate_practically_never_exhausts_the_sdk_policy():
    """The storm's weather through the SDK policy, 5,000 calls: 429 with Retry-After: 1, 503, a dropped
    connection and a 1.5 s timeout, each 7.5% of attempts. azure-core's counts (3 each) would fail ~20."""
    rng = random.Random(11)

    def weather(attempt: int) -> Any:
        draw = rng.random()
        if draw < 0.075:
            return 429, {"Retry-After": "1"}
        if draw < 0.15:
            return 503
        if draw < 0.225:
            return ServiceRequestError("Server disconnected")
        if draw < 0.30:
            clock.now += 1.5
            return ServiceResponseError("timed out")
        return 200

    failed = 0
    for index in range(5_000):
        pipeline, _, clock = pipeline_for(weather)
        method = ("GET", "PUT", "PATCH", "DELETE")[index % 4]
        try:
            response = await pipeline.run(HttpRequest(method, "https://vault.example/secrets/s"))
            failed += response.http_response.status_code != 200
        except (ServiceRequestError, ServiceResponseError):
            failed += 1
    assert failed == 0


def test_every_sdk_client_gets_the_same_policy():
    policy = retry_policy()
    settings = policy.configure_retries({})
    assert settings["total"] == settings["connect"] == settings["read"] == settings["status"] == RETRY_TOTAL
    assert policy.retry_budget == RETRY_BUDGET


@pytest.mark.parametrize(("method", "status", "headers"), [
    ("GET", 404, {"Retry-After": "1"}),  # azure-core retries any 4xx with Retry-After: it is the same next time
    ("POST", 409, {"Retry-After": "1"}),
    ("POST", 400, {"Retry-After": "2"}),
    ("GET", 507, {}),  # and 505 to 998
    ("PUT", 501, {}),
    ("POST", 502, {}),  # a POST that got a 502 may have been applied
])
async def test_sdk_policy_retries_only_what_the_schedule_retries(method, status, headers):
    pipeline, transport, clock = pipeline_for(lambda attempt: (status, headers))
    response = await pipeline.run(HttpRequest(method, "https://vault.example/secrets/s"))
    assert response.http_response.status_code == status
    assert len(transport.sent) == 1 and clock.slept == []


@pytest.mark.parametrize(("method", "status"), [("GET", 408), ("GET", 500), ("DELETE", 502), ("PUT", 504),
                                                ("POST", 500), ("POST", 503), ("PATCH", 429)])
async def test_sdk_policy_still_retries_what_the_schedule_retries(method, status):
    pipeline, transport, _ = pipeline_for(failing(2, lambda: status))
    assert (await pipeline.run(HttpRequest(method, "https://vault.example/secrets/s"))).http_response.status_code == 200
    assert len(transport.sent) == 3


@pytest.mark.parametrize("value", ["soon", "Wed, 99 Foo 2099", "1e999x", "", "1e400",
                                   "Mon, 01 Jan 2024 00:00:00 +99999999999999999999"])
async def test_an_unreadable_retry_after_is_backed_off_from_not_a_failure_of_the_call(value):
    pipeline, transport, clock = pipeline_for(failing(1, lambda: (503, {"Retry-After": value})))
    assert (await pipeline.run(HttpRequest("GET", "https://vault.example/secrets/s"))).http_response.status_code == 200
    assert len(transport.sent) == 2 and clock.slept[0] <= BACKOFF_FACTOR


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "2", "retry-after-ms": "500"}, 2.0),  # Retry-After first, as azure-core reads them
    ({"retry-after-ms": "1500"}, 1.5), ({"x-ms-retry-after-ms": "250"}, 0.25),
    ({"retry-after": "soon", "retry-after-ms": "300"}, 0.3), ({"retry-after-ms": "x"}, None), ({}, None),
    ({"retry-after-ms": "1e400"}, None), ({"x-ms-retry-after-ms": "inf"}, None), ({"retry-after-ms": "nan"}, None),
    ({"retry-after-ms": "inf", "x-ms-retry-after-ms": "250"}, 0.25),  # not a finite wait: the next one is read
])
def test_every_client_reads_an_answer_s_wait_the_same_way(headers, seconds):
    from shared.azure.retry import retry_after_of

    assert retry_after_of(headers) == seconds
