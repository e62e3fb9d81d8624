"""The sweep's adaptive concurrency: halves on throttling (once per cooldown), grows back by one per round."""

import asyncio

from shared.rotation.sweep import AimdLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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
