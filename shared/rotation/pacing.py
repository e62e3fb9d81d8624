"""Adapting a sweep to Microsoft Graph's throttling: how many rotations run at once (:class:`AimdLimiter`) and
how fast Graph requests leave once Graph has answered 429 (:class:`Pacer`, one per kind in :class:`GraphPacing`,
fed by hooks on the Graph HTTP client). Both recover while Graph stops throttling."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared import telemetry
from shared.scoped import scoped

T = TypeVar("T")
Hook = Callable[[Any], Awaitable[None]]
Paced = Callable[[Hook, Hook], AbstractContextManager[None]]

log = logging.getLogger(__name__)
# The pacing of the fan-out (a sweep) whose task is running: the directory's hooks see every Graph request of the
# process, and a pacing acts only on its own fan-out's (``GraphPacing.applied``): an API request on the same worker,
# or another sweep's, is neither held nor counted.
_SWEEP: contextvars.ContextVar[GraphPacing | None] = contextvars.ContextVar("graph_pacing", default=None)
# The tenant whose Graph the running task calls (set by the directory's Graph session): Graph throttles per tenant,
# so one tenant's 429 paces that tenant's requests, not another's.
GRAPH_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("graph_tenant", default=None)


def held_for(retry_after: float | None) -> float:
    """How long a 429's ``Retry-After`` holds the requests of its kind back: as asked, but no longer than one call
    waits in all (the retry budget). The call that got it has given up already (its wait would have run past the
    budget), and one answer must not hold a sweep's other requests for a day (``86400``) or for ever."""
    from shared.azure.retry import RETRY_BUDGET

    return min(retry_after or 0.0, RETRY_BUDGET)


class AimdLimiter:
    """Rotations in flight, adapted to throttling: additive increase, multiplicative decrease.

    Every Graph 429 halves the limit (at most once per cooldown: the 429's Retry-After, at least ``cooldown``
    seconds, so one burst counts once); after the cooldown, each rotation that finishes without a throttle since
    it started adds ``1 / limit`` (one per round of rotations), up to ``maximum``. The retry policy still
    honours each Retry-After. Concurrency alone cannot keep within a rate (one rotation may already send
    faster than Graph allows), so :class:`Pacer` paces the requests themselves once Graph throttles them; the
    limit halves only for a 429 of a kind not paced yet (the burst before pacing began), not for each of the
    pacer's rare overshoots.
    """

    def __init__(self, maximum: int, *, minimum: int = 1, decrease: float = 0.5, cooldown: float = 1.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.limit = float(self.maximum)
        self.lowest = self.maximum
        self.decrease = decrease
        self.cooldown = cooldown
        self.throttles = 0
        self.in_flight = 0
        self._clock = clock or time.monotonic
        self._hold_until = float("-inf")
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        """Wait for a slot; returns the throttle count at the start (give it back to :meth:`release`)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
            return self.throttles

    async def release(self, throttles_at_start: int) -> None:
        async with self._changed:
            self.in_flight -= 1
            quiet = self._clock() >= self._hold_until
            if quiet and self.throttles == throttles_at_start and self.limit < self.maximum:
                self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
            self._changed.notify_all()

    def throttled(self, retry_after: float | None = None, *, back_off: bool = True) -> None:
        """A 429 was answered (called from the HTTP client's response hook, on the loop). ``back_off=False``
        counts it without lowering the limit (a :class:`Pacer` already shapes the requests it was for)."""
        self.throttles += 1
        if not back_off:
            return
        now = self._clock()
        if now < self._hold_until:
            return
        self._hold_until = now + max(self.cooldown, held_for(retry_after))
        before = int(self.limit)
        self.limit = max(float(self.minimum), self.limit * self.decrease)
        self.lowest = min(self.lowest, int(self.limit))
        if int(self.limit) != before:
            log.info("Rotation sweep: Graph throttled; concurrency %d -> %d", before, int(self.limit))
            telemetry.record_concurrency(int(self.limit))


class Pacer:
    """Graph requests of one kind (writes, or reads), paced once Graph has throttled that kind.

    Unpaced until the first 429. That 429 tells the window of Graph's limit: a burst from idle fills a limit
    of N requests per W seconds, and the first slot frees W after the burst began, so W is about the time from
    the first request to that 429 plus its Retry-After. The pace becomes the requests Graph accepted in the last
    window, divided by the window, times ``headroom``, and no request of the kind leaves before the Retry-After
    ends. From then they leave one every ``1 / pace`` seconds, in order: the in-flight requests that were
    throttled together retry when the same Retry-After ends, but go out spread, between new ones.

    Recovery: while no 429 comes, the pace rises by ``step`` (doubles, if it rests on fewer than
    ``min_samples`` accepted requests) once per window in which it held a request back. So it finds a limit
    that rose, and ends above what the sweep asks for, where it holds nothing back. A rise that meets a 429
    within two windows overshot: the pace goes back to where it was (it held for a window), and waits twice
    as many windows (up to ``max_patience``) before the next rise. Any other 429 sets the pace from the last
    window again. Only the first 429 of a burst changes the pace; those within its Retry-After only count.

    The pace never falls below ``min_rate``: 429s that come now and then whatever the rate (Graph under load,
    not a limit the sweep exceeds) would otherwise ratchet it down with every one, since a paced sweep's
    "accepted in the last window" is its own pace. Microsoft Graph's limits for application writes are far
    above one request a second, and each 429 is still honoured (nothing leaves before its Retry-After ends).
    """

    def __init__(self, *, headroom: float = 0.95, step: float = 0.05, min_samples: int = 10,
                 max_patience: int = 8, cooldown: float = 1.0, min_rate: float = 1.0,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.headroom = headroom
        self.min_rate = min_rate
        self.step = step
        self.min_samples = min_samples
        self.max_patience = max_patience
        self.cooldown = cooldown
        self.rate: float | None = None  # requests per second; None: unpaced
        self.lowest: float | None = None
        self.window: float | None = None  # Graph's limit window, as learned from the first 429
        self.throttles = 0
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._first: float | None = None  # when the first request of the kind left
        self._accepted: deque[float] = deque(maxlen=100_000)  # when each accepted request was answered
        self._hold_until = -math.inf
        self._next = -math.inf  # the next free slot
        self._checked_at = -math.inf  # the start of the windows that a rise waits for
        self._held_back = False  # a request waited for its slot since then
        self._patience = 1  # windows between rises
        self._before_rise: float | None = None  # the pace before the last rise, while it is on trial
        self._slow_start = False
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until the request may leave (called from the HTTP client's request hook)."""
        now = self._clock()
        if self._first is None:
            self._first = now
        if self.rate is None and now >= self._hold_until:
            return
        async with self._lock:  # first come, first served: one waiter sleeps for its slot at a time
            while True:
                now = self._clock()
                slot = max(self._hold_until, self._next if self.rate is not None else now)
                if slot <= now:
                    break
                self._held_back = True
                await self._sleep(slot - now)
            if self.rate is not None:
                gap = 1 / self.rate
                # a waiter that woke a little late keeps the schedule; after idling, the schedule restarts
                self._next = (self._next if now - self._next < gap else now) + gap

    def accepted(self) -> None:
        """Graph answered a request of the kind with anything but 429."""
        now = self._clock()
        self._accepted.append(now)
        if self.window is not None:
            while self._accepted and self._accepted[0] < now - 2 * self.window:
                self._accepted.popleft()
        if self.rate is None or self.window is None or now < self._hold_until:
            return
        if self._before_rise is not None and now - self._checked_at >= 2 * self.window:
            self._before_rise = None  # the last rise held
        if now - self._checked_at < self._patience * self.window:
            return
        if self._held_back:
            self._before_rise = self.rate
            self.rate *= 2 if self._slow_start else 1 + self.step
            log.info("Rotation sweep: no Graph throttling for %.0f s; pace %.2f -> %.2f per second",
                     now - self._checked_at, self._before_rise, self.rate)
        self._checked_at = now
        self._held_back = False

    def throttled(self, retry_after: float | None = None) -> bool:
        """Graph answered a request of the kind with 429. Returns whether this one changed the pace (the first of
        a burst); those within its Retry-After only count."""
        self.throttles += 1
        now = self._clock()
        if now < self._hold_until:
            return False
        wait = max(self.cooldown, held_for(retry_after))
        if self.window is None:
            self.window = max(self.cooldown, now - (self._first if self._first is not None else now) + wait)
        before = self.rate
        recent = sum(1 for answered in self._accepted if answered > now - self.window)
        if self._before_rise is not None:  # the last rise overshot
            self.rate = self._before_rise
            self._patience = min(self.max_patience, 2 * self._patience)
            self._slow_start = False
        else:
            self.rate = min(max(1, recent) / self.window, before if before is not None else math.inf) * self.headroom
            self._patience = 1
            self._slow_start = recent < self.min_samples
        self.rate = max(self.min_rate, self.rate)
        self.lowest = self.rate if self.lowest is None else min(self.lowest, self.rate)
        self._before_rise = None
        self._hold_until = self._next = self._checked_at = now + wait
        self._held_back = False
        log.info("Rotation sweep: Graph throttled for %.1f s; pace %s -> %.2f per second (%d accepted in %.1f s)",
                 wait, "none" if before is None else f"{before:.2f}", self.rate, recent, self.window)
        return True


class GraphPacing:
    """A :class:`Pacer` for Graph's writes and one for its reads, per tenant, and the HTTP client hooks that feed
    them. The hooks act only on the requests of the tasks that run :meth:`applied` (its fan-out's): those of a tenant
    (:data:`GRAPH_TENANT`) go through that tenant's pacers, those of none known through :attr:`pacers`."""

    def __init__(self, limiter: AimdLimiter, **options: Any) -> None:
        self.limiter = limiter
        self._options = options
        self.pacers = self._pair()  # the requests of no known tenant
        self.tenants: dict[str, dict[str, Pacer]] = {}

    def _pair(self) -> dict[str, Pacer]:
        return {"write": Pacer(**self._options), "read": Pacer(**self._options)}

    @staticmethod
    def kind(method: str) -> str:
        return "read" if method.upper() in ("GET", "HEAD") else "write"

    def applied(self) -> AbstractContextManager[None]:
        """The Graph requests of the running task (and of the tasks it starts) are this pacing's while it lasts."""
        return scoped(_SWEEP, self)

    def _pacer(self, method: str) -> Pacer | None:
        """The pacer of a request of the running task: None when the task is not this pacing's fan-out's."""
        if _SWEEP.get() is not self:
            return None
        tenant = GRAPH_TENANT.get()
        pacers = self.pacers if tenant is None else self.tenants.get(tenant) or self.tenants.setdefault(
            tenant, self._pair())
        return pacers[self.kind(method)]

    async def on_request(self, request: Any) -> None:
        pacer = self._pacer(request.method)
        if pacer is not None:
            await pacer.acquire()

    async def on_response(self, response: Any) -> None:
        from shared.azure.retry import retry_after_of

        pacer = self._pacer(response.request.method)
        if pacer is None:
            return
        if response.status_code != 429:
            pacer.accepted()
            return
        retry_after = retry_after_of(response.headers)  # Retry-After, else retry-after-ms / x-ms-retry-after-ms
        first_contact = pacer.rate is None  # a burst the pacer did not shape: fewer rotations in flight, too
        pacer.throttled(retry_after)
        self.limiter.throttled(retry_after, back_off=first_contact)

    def paced(self) -> dict[str, float]:
        """The pace each kind ended at: the slowest over the tenants paced."""
        rates: dict[str, float] = {}
        for pacers in (self.pacers, *self.tenants.values()):
            for kind, pacer in pacers.items():
                if pacer.rate is not None:
                    rates[kind] = min(rates.get(kind, math.inf), pacer.rate)
        return rates


@dataclass
class FanOut:
    """How a paced fan-out went: items handled, items left for the next run (the budget ran out), and what the
    throttling did (Graph 429s seen, the concurrency's low point, the pace each pacer ended at)."""

    handled: int = 0
    left: int = 0
    throttled: int = 0
    lowest_concurrency: int = 0
    paced: dict[str, float] = field(default_factory=dict)


async def paced_fan_out(items: Sequence[T], handle: Callable[[T], Awaitable[None]], *, paced: Paced,
                        max_concurrency: int, budget_seconds: float, monotonic: Callable[[], float],
                        what: str, progress_every: int = 25) -> FanOut:
    """Run ``handle`` on every item with at most ``max_concurrency`` at once (fewer while Graph throttles), every
    Graph request paced (``paced``: the directory's hooks), and none started once ``budget_seconds`` have passed:
    the one way both sweeps (rotation, health) work through what is due."""
    loop = asyncio.get_running_loop()
    started = monotonic()
    limiter = AimdLimiter(max_concurrency, clock=loop.time)
    pacing = GraphPacing(limiter, clock=loop.time)
    outcome = FanOut()

    async def one(item: T) -> None:
        mark = await limiter.acquire()
        try:
            if monotonic() - started > budget_seconds:
                outcome.left += 1
                return
            with pacing.applied():
                await handle(item)
            outcome.handled += 1
            if outcome.handled % progress_every == 0:
                log.info("%s: %d of %d handled", what, outcome.handled, len(items))
        finally:
            await limiter.release(mark)

    if items:
        with paced(pacing.on_request, pacing.on_response):
            await asyncio.gather(*(one(item) for item in items))
    outcome.throttled, outcome.lowest_concurrency, outcome.paced = limiter.throttles, limiter.lowest, pacing.paced()
    return outcome
