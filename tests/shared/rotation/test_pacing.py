"""The sweep's throttling control: the adaptive concurrency (halves on throttling, once per cooldown; grows back
by one per round) and the pacing of Graph requests (a pace learned from the 429, held until its Retry-After
ends, requests spread at the pace, recovery while no 429 comes). Fake clocks throughout: nothing sleeps."""

import asyncio
import heapq
import itertools
import math
import random
from collections import deque
from types import SimpleNamespace

import pytest

from shared.rotation.pacing import AimdLimiter, GraphPacing, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class VirtualTime(Clock):
    """A clock whose ``sleep`` waits in virtual time: :meth:`run` lets every ready task run, then jumps to the
    next wake-up. Deterministic, and a minute of traffic takes milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self._wakeups: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._wakeups, (self.now + max(0.0, delay), self._count, future))
        self._count += 1
        await future

    async def run(self, work):
        task = asyncio.ensure_future(work)
        while True:
            for _ in range(20):  # enough turns of the loop for a lock or condition hand-over
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            assert self._wakeups, "nothing will ever wake up"
            when, _, future = heapq.heappop(self._wakeups)
            self.now = max(self.now, when)
            future.set_result(None)


def pacer_at(clock: Clock, **options) -> Pacer:
    sleep = clock.sleep if isinstance(clock, VirtualTime) else None
    return Pacer(clock=clock, sleep=sleep, **options)


async def learn_pace_of_10(clock: VirtualTime, pacer: Pacer) -> None:
    """50 requests accepted from t=0, then at t=1 a 429 with Retry-After 4: the window is 5 s, the pace (with
    headroom 1) 10 per second, and nothing leaves before t=5."""
    for _ in range(50):
        await pacer.acquire()
        pacer.accepted()
    clock.now = 1.0
    pacer.throttled(retry_after=4)


async def busy(clock: VirtualTime, pacer: Pacer, until: float) -> None:
    """More demand than the pace: a request as soon as the pacer lets one leave, each accepted, until ``until``."""
    while clock.now < until:
        await pacer.acquire()
        pacer.accepted()


# -- AimdLimiter ---------------------------------------------------------------------------------------------


async def test_a_throttle_halves_the_limit_once_per_cooldown_and_quiet_rounds_restore_it():
    clock = Clock()
    limiter = AimdLimiter(16, clock=clock)
    limiter.throttled(retry_after=2)
    limiter.throttled(retry_after=2)  # the same burst
    assert int(limiter.limit) == 8 and limiter.throttles == 2
    clock.now = 1.0
    limiter.throttled()
    assert int(limiter.limit) == 8  # still within the 429's Retry-After
    clock.now = 2.5
    limiter.throttled()
    assert int(limiter.limit) == 4 and limiter.lowest == 4
    clock.now = 10
    for _ in range(40):  # rotations without a throttle: about one more slot per round
        mark = await limiter.acquire()
        await limiter.release(mark)
    assert 8 <= limiter.limit <= 16


async def test_the_limit_bounds_what_runs_at_once_and_never_drops_below_one():
    limiter = AimdLimiter(4, clock=Clock())
    for _ in range(10):
        limiter.throttled(retry_after=0)
        limiter._hold_until = float("-inf")  # every throttle counts in this test
    assert limiter.limit == 1
    running = peak = 0

    async def rotation() -> None:
        nonlocal running, peak
        mark = await limiter.acquire()
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        await limiter.release(mark)

    await asyncio.gather(*(rotation() for _ in range(20)))
    assert peak <= 4 and limiter.in_flight == 0


def test_a_throttle_without_back_off_is_counted_and_keeps_the_limit():
    limiter = AimdLimiter(8, clock=Clock())
    limiter.throttled(retry_after=1, back_off=False)
    assert limiter.throttles == 1 and limiter.limit == 8 and limiter.lowest == 8


# -- Pacer ---------------------------------------------------------------------------------------------------


async def test_unpaced_until_the_first_throttle():
    clock = VirtualTime()
    pacer = pacer_at(clock)

    async def burst() -> None:
        for _ in range(50):
            await pacer.acquire()
            pacer.accepted()

    await clock.run(burst())
    assert clock.now == 0 and pacer.rate is None and pacer.throttles == 0


async def test_the_first_throttle_learns_the_window_and_the_pace_and_holds_until_its_retry_after():
    clock = VirtualTime()
    pacer = pacer_at(clock, headroom=0.9)
    for n in range(100):  # 100 requests accepted in the first 4 s: a limit of 100 per 10 s, reached
        clock.now = n * 0.04
        await pacer.acquire()
        pacer.accepted()
    clock.now = 4.0
    assert pacer.throttled(retry_after=6) is True
    assert pacer.window == pytest.approx(10.0)  # 4 s from the first request, + the Retry-After
    assert pacer.rate == pytest.approx(100 / 10 * 0.9)
    # others throttled in the same burst only count
    clock.now = 4.01
    assert pacer.throttled(retry_after=6) is False
    assert pacer.throttles == 2 and pacer.rate == pytest.approx(9.0)

    sent: list[float] = []

    async def request() -> None:
        await pacer.acquire()
        sent.append(clock.now)

    await clock.run(asyncio.gather(*(request() for _ in range(10))))
    # nothing before the Retry-After ends, then one every 1 / pace seconds, not together
    assert sent[0] == pytest.approx(10.0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert all(gap == pytest.approx(1 / 9.0) for gap in gaps)


async def test_requests_throttled_together_retry_spread_between_new_ones():
    clock = VirtualTime()
    pacer = pacer_at(clock)
    for _ in range(20):
        await pacer.acquire()
        pacer.accepted()
    clock.now = 1.0
    pacer.throttled(retry_after=1)  # window 2 s, 20 accepted in it: a pace of 9.5 per second
    order: list[tuple[str, float]] = []

    async def request(name: str, start: float) -> None:
        await clock.sleep(start - clock.now)  # the retries come back when the Retry-After ends
        await pacer.acquire()
        order.append((name, clock.now))

    work = [request(f"retry-{n}", 2.0) for n in range(8)] + [request(f"new-{n}", 2.0 + n * 0.05) for n in range(4)]
    await clock.run(asyncio.gather(*work))
    times = [when for _, when in order]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[-1] - times[0] == pytest.approx(11 / pacer.rate)  # 12 requests, evenly spread


async def test_the_pace_rises_after_quiet_windows_only_while_it_holds_requests_back():
    clock = VirtualTime()
    pacer = pacer_at(clock, headroom=1.0, step=0.1)
    await learn_pace_of_10(clock, pacer)  # window 5 s, pace 10 per second, held until 5
    clock.now = 6.0
    pacer.accepted()  # quiet, but nothing was held back: no rise
    clock.now = 11.5
    pacer.accepted()
    assert pacer.rate == pytest.approx(10.0)

    await clock.run(busy(clock, pacer, 17.0))
    assert pacer.rate == pytest.approx(11.0)  # one rise per window held back
    await clock.run(busy(clock, pacer, 22.5))
    assert pacer.rate == pytest.approx(12.1)


async def test_a_rise_that_meets_a_throttle_goes_back_and_waits_longer_before_the_next():
    clock = VirtualTime()
    pacer = pacer_at(clock, headroom=1.0, step=0.1)
    await learn_pace_of_10(clock, pacer)  # window 5 s, pace 10

    await clock.run(busy(clock, pacer, 10.5))
    assert pacer.rate == pytest.approx(11.0)
    pacer.throttled(retry_after=1)  # the rise overshot
    assert pacer.rate == pytest.approx(10.0)
    await clock.run(busy(clock, pacer, 21.0))  # one window after the hold: no rise yet (two windows now)
    assert pacer.rate == pytest.approx(10.0)
    await clock.run(busy(clock, pacer, 22.0))
    assert pacer.rate == pytest.approx(11.0)


async def test_a_throttle_long_after_a_rise_sets_the_pace_from_the_last_window():
    clock = VirtualTime()
    pacer = pacer_at(clock, headroom=1.0)
    await learn_pace_of_10(clock, pacer)  # window 5 s, pace 10
    pacer._accepted.clear()
    for n in range(15):  # Graph now accepts 3 per second (someone else uses the rest)
        clock.now = 20.1 + n / 3
        pacer.accepted()
    clock.now = 25.0
    pacer.throttled(retry_after=2)
    assert pacer.rate == pytest.approx(15 / 5)
    assert pacer.lowest == pytest.approx(3.0)


async def test_throttles_that_come_whatever_the_rate_cannot_pace_below_the_floor():
    clock = VirtualTime()
    pacer = pacer_at(clock, min_rate=1.0)
    for n in range(40):  # now and then a 429, whatever the pace: a paced sweep's last window is its own pace
        clock.now = n * 3.0
        pacer.accepted()
        pacer.throttled(retry_after=1)
    assert pacer.rate == pytest.approx(1.0)
    assert pacer.lowest == pytest.approx(1.0)


async def test_a_pace_learned_from_few_requests_doubles_until_the_next_throttle():
    clock = VirtualTime()
    pacer = pacer_at(clock, headroom=1.0, min_rate=0.1)
    await pacer.acquire()
    clock.now = 0.5
    pacer.throttled(retry_after=1.5)  # no request accepted at all (the limit was used up by others)
    assert pacer.window == pytest.approx(2.0) and pacer.rate == pytest.approx(0.5)

    await clock.run(busy(clock, pacer, 12.0))
    assert pacer.rate >= 8  # 0.5 -> 1 -> 2 -> 4 -> 8 ...


# -- GraphPacing and the two together against a limit ---------------------------------------------------------


def answer(method: str, status: int, retry_after: float | None = None) -> SimpleNamespace:
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return SimpleNamespace(status_code=status, headers=headers, request=SimpleNamespace(method=method))


async def test_graph_pacing_paces_writes_and_reads_apart_and_backs_off_concurrency_only_at_first_contact():
    clock = Clock()
    limiter = AimdLimiter(16, clock=clock)
    pacing = GraphPacing(limiter, clock=clock)
    with pacing.applied():  # the hooks act on the requests of their own fan-out
        for _ in range(10):
            await pacing.on_request(SimpleNamespace(method="POST"))
            await pacing.on_response(answer("POST", 200))
        clock.now = 1.0
        await pacing.on_response(answer("POST", 429, retry_after=2))
        assert pacing.paced() == {"write": pytest.approx(10 / 3 * 0.95)}
        assert limiter.limit == 8 and limiter.throttles == 1
        await pacing.on_request(SimpleNamespace(method="GET"))  # reads are not held
        clock.now = 20.0
        await pacing.on_response(answer("POST", 429, retry_after=1))  # a paced kind: the pacer handles it
        assert limiter.limit == 8 and limiter.throttles == 2


async def test_against_a_limit_of_100_writes_per_10_s_the_sweep_keeps_the_rate_and_few_calls_are_throttled():
    """32 rotations at once, 2 writes each with other work (0.2 to 0.4 s) before each, far more than Graph
    allows: a sliding window of 100 accepted writes per 10 s at the server, answering 429 with the seconds until
    a slot frees."""
    clock = VirtualTime()
    limiter = AimdLimiter(32, clock=clock)
    pacing = GraphPacing(limiter, clock=clock, sleep=clock.sleep)
    limit, window, latency = 100, 10.0, 0.05
    passed: deque[float] = deque()
    calls = {"writes": 0, "throttled": 0, "accepted": 0}

    def server(arrival: float) -> tuple[int, float | None]:
        while passed and passed[0] <= arrival - window:
            passed.popleft()
        if len(passed) < limit:
            passed.append(arrival)
            return 200, None
        return 429, max(1, math.ceil(passed[0] + window - arrival))

    async def write() -> None:
        while True:
            await pacing.on_request(SimpleNamespace(method="POST"))
            status, retry_after = server(clock.now)
            calls["writes"] += 1
            await clock.sleep(latency)
            await pacing.on_response(answer("POST", status, retry_after))
            if status != 429:
                calls["accepted"] += 1
                return
            calls["throttled"] += 1
            await clock.sleep(retry_after)  # the retry policy honours Retry-After

    work = random.Random(8)

    async def rotation() -> None:
        mark = await limiter.acquire()
        try:
            await clock.sleep(work.uniform(0.2, 0.4))
            await write()
            await clock.sleep(work.uniform(0.2, 0.4))
            await write()
        finally:
            await limiter.release(mark)

    rotations = 500
    with pacing.applied():  # the hooks act on the requests of their own fan-out (the tasks started within)
        await clock.run(asyncio.gather(*(rotation() for _ in range(rotations))))
    assert calls["accepted"] == 2 * rotations
    rate = calls["accepted"] / clock.now
    assert rate >= 0.8 * limit / window
    assert calls["throttled"] / calls["writes"] < 0.05



def _paced_on_a_clock() -> tuple[GraphPacing, list[float]]:
    """The sweep's pacing on a clock of its own that its sleeps move; the sleeps it made."""
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return GraphPacing(AimdLimiter(16, clock=lambda: now[0]), clock=lambda: now[0], sleep=sleep), slept

@pytest.mark.parametrize("retry_after", ["86400", "1e400"])
async def test_a_retry_after_past_the_retry_budget_holds_the_kind_s_requests_no_longer_than_the_budget(retry_after):
    """(Review E.) The call that got it gives up at once (its wait would run past the budget); the sweep's other
    requests of the kind were held as long as it said: a day, or for ever."""
    from shared.azure.retry import RETRY_BUDGET

    pacing, slept = _paced_on_a_clock()
    with pacing.applied():  # the hooks act on the requests of their own fan-out
        await pacing.on_request(SimpleNamespace(method="POST"))
        await pacing.on_response(SimpleNamespace(status_code=429, headers={"retry-after": retry_after},
                                                 request=SimpleNamespace(method="POST")))
        await asyncio.wait_for(pacing.on_request(SimpleNamespace(method="POST")), 5)  # another rotation's write
        assert 0 < sum(slept) <= RETRY_BUDGET, slept


@pytest.mark.parametrize("header", ["retry-after-ms", "x-ms-retry-after-ms"])
async def test_a_429_that_says_its_wait_in_milliseconds_holds_the_kind_s_requests_that_long(header: str) -> None:
    """(Review FC 3.) The pacer reads a 429's wait as every client does (``retry_after_of``): a wait said in
    milliseconds holds the kind's requests as long as a ``Retry-After`` would, not only the cooldown."""
    pacing, slept = _paced_on_a_clock()
    with pacing.applied():  # the hooks act on the requests of their own fan-out
        await pacing.on_request(SimpleNamespace(method="POST"))
        await pacing.on_response(SimpleNamespace(status_code=429, headers={header: "12000"},
                                                 request=SimpleNamespace(method="POST")))
        await asyncio.wait_for(pacing.on_request(SimpleNamespace(method="POST")), 5)
        assert sum(slept) >= 12, slept


class _Suspended:
    def __await__(self):  # type: ignore[no-untyped-def]
        yield


def test_a_paced_task_dropped_unfinished_is_closed_without_an_error() -> None:
    """A worker's loop dropped with a paced request still waiting (a worker that died, a host shutting down): the
    collector closes its coroutine outside the task's context, where the pacing it set is not, and nothing raises."""
    import contextvars

    pacing = GraphPacing(AimdLimiter(1, clock=lambda: 0.0), clock=lambda: 0.0)

    async def waiting() -> None:
        with pacing.applied():
            await _Suspended()

    coroutine = waiting()
    task_context = contextvars.copy_context()
    task_context.run(coroutine.send, None)  # started in its task's own context, as asyncio runs it
    assert task_context.run(pacing._pacer, "GET") is not None and pacing._pacer("GET") is None

    coroutine.close()  # by the collector, from wherever it runs

    assert pacing._pacer("GET") is None
