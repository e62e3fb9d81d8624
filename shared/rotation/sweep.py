"""The timer sweep: claim what is due, rotate with bounded concurrency, stop claiming before the budget ends.

It reads only the schedule entries that are due (a range query), drops stale ones, and resumes rotations
that a crash left half done (their entry stays due and their lease runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from shared import telemetry
from shared.errors import NotFound
from shared.rotation.protocol import LeaseLost, Rotator
from shared.rotation.state import STATUS_SUCCEEDED, read_state
from shared.store.schedule import DueEntry

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    due: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    stale: int = 0
    left_for_next_sweep: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    throttled: int = 0  # Graph answers 429 seen while the sweep ran
    lowest_concurrency: int = 0  # the adaptive limit's low point (max_concurrency when never throttled)


class AimdLimiter:
    """Rotations in flight, adapted to throttling: additive increase, multiplicative decrease.

    Every Graph 429 halves the limit (at most once per cooldown: the 429's Retry-After, at least ``cooldown``
    seconds, so one burst counts once); after the cooldown, each rotation that finishes without a throttle since
    it started adds ``1 / limit`` (one per round of rotations), up to ``maximum``. The retry policy still
    honours each Retry-After; this keeps the sweep from sending more than Graph accepts, so few calls are
    throttled while throughput stays near the rate Graph allows.
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

    def throttled(self, retry_after: float | None = None) -> None:
        """A 429 was answered (called from the HTTP client's response hook, on the loop)."""
        self.throttles += 1
        now = self._clock()
        if now < self._hold_until:
            return
        self._hold_until = now + max(self.cooldown, retry_after or 0.0)
        before = int(self.limit)
        self.limit = max(float(self.minimum), self.limit * self.decrease)
        self.lowest = min(self.lowest, int(self.limit))
        if int(self.limit) != before:
            log.info("Rotation sweep: Graph throttled; concurrency %d -> %d", before, int(self.limit))
            telemetry.record_concurrency(int(self.limit))


async def sweep(
    rotator: Rotator,
    *,
    max_concurrency: int = 8,
    budget_seconds: float = 240.0,
    clock: Callable[[], float] | None = None,
    limit: int = 1000,
) -> SweepReport:
    loop = asyncio.get_running_loop()
    monotonic = clock or loop.time
    started = monotonic()
    now = rotator.now()
    entries = await rotator.index.due(now, limit=limit)
    report = SweepReport(due=len(entries))
    telemetry.record_sweep_start(len(entries))
    log.info("Rotation sweep: %d due at %s", len(entries), now.astimezone(UTC).isoformat())
    limiter = AimdLimiter(max_concurrency, clock=loop.time)

    async def one(entry: DueEntry) -> None:
        mark = await limiter.acquire()
        try:
            if monotonic() - started > budget_seconds:
                report.left_for_next_sweep += 1
                return
            await _rotate_entry(rotator, entry, report)
            done = report.succeeded + report.failed + report.skipped + report.stale
            if done % 25 == 0:
                log.info("Rotation sweep: %d of %d handled", done, report.due)
        finally:
            await limiter.release(mark)

    with _watch_throttling(rotator, limiter, bool(entries)):
        await asyncio.gather(*(one(entry) for entry in entries))
    report.throttled, report.lowest_concurrency = limiter.throttles, limiter.lowest
    log.info(
        "Rotation sweep done in %.1f s: %d succeeded, %d failed, %d skipped, %d stale, %d left for the next sweep",
        monotonic() - started, report.succeeded, report.failed, report.skipped, report.stale,
        report.left_for_next_sweep,
    )
    telemetry.record_sweep_end(monotonic() - started, report.succeeded, report.failed)
    return report


@contextlib.contextmanager
def _watch_throttling(rotator: Rotator, limiter: AimdLimiter, active: bool) -> Iterator[None]:
    """Tell the limiter of every 429 that Microsoft Graph answers while the sweep runs (a response hook on the
    one Graph HTTP client of these clients)."""
    if not active:
        yield
        return
    hooks: list[Callable[[Any], Awaitable[None]]] = rotator.clients.graph_http().event_hooks["response"]

    from shared.azure.retry import parse_retry_after

    async def on_response(response: Any) -> None:
        if response.status_code == 429:
            limiter.throttled(parse_retry_after(response.headers.get("retry-after")))

    hooks.append(on_response)
    try:
        yield
    finally:
        hooks.remove(on_response)


async def _rotate_entry(rotator: Rotator, entry: DueEntry, report: SweepReport) -> None:
    try:
        record = await rotator.table.get(entry.app, entry.connection_id)
    except NotFound:
        await rotator.index.remove(entry.key)
        report.stale += 1
        return
    state = read_state(record)
    if state.schedule_key != entry.key or not state.enabled:
        await rotator.index.remove(entry.key)
        report.stale += 1
        return
    claimed = await rotator.claim(record, trigger="schedule")
    if claimed is None:
        report.skipped += 1
        return
    report.claimed += 1
    try:
        result = await rotator.run(claimed)
    except LeaseLost:
        report.skipped += 1
        return
    except Exception:
        log.exception("Rotation of %s connection %s failed unexpectedly", entry.app, entry.connection_id)
        report.failed += 1
        report.outcomes[entry.connection_id] = "error"
        return
    status = read_state(result).status or ""
    report.outcomes[entry.connection_id] = status
    if status == STATUS_SUCCEEDED:
        report.succeeded += 1
    else:
        report.failed += 1
