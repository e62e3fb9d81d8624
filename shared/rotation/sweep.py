"""The timer sweep: claim what is due, rotate with bounded concurrency, stop claiming before the budget ends.

It reads only the schedule entries that are due (a range query), drops stale ones, and resumes rotations
that a crash left half done (their entry stays due and their lease runs out). When Microsoft Graph throttles,
the sweep paces its Graph requests and runs fewer rotations at once (``shared.rotation.pacing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from shared import telemetry
from shared.errors import NotFound
from shared.rotation.pacing import AimdLimiter, GraphPacing
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
    paced: dict[str, float] = field(default_factory=dict)  # "write"/"read": the pace (per second) at the end


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
    pacing = GraphPacing(limiter, clock=loop.time)

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

    with _watch_throttling(rotator, pacing, bool(entries)):
        await asyncio.gather(*(one(entry) for entry in entries))
    report.throttled, report.lowest_concurrency = limiter.throttles, limiter.lowest
    report.paced = pacing.paced()
    log.info(
        "Rotation sweep done in %.1f s: %d succeeded, %d failed, %d skipped, %d stale, %d left for the next sweep",
        monotonic() - started, report.succeeded, report.failed, report.skipped, report.stale,
        report.left_for_next_sweep,
    )
    telemetry.record_sweep_end(monotonic() - started, report.succeeded, report.failed)
    return report


@contextlib.contextmanager
def _watch_throttling(rotator: Rotator, pacing: GraphPacing, active: bool) -> Iterator[None]:
    """Pace every Graph request and tell the pacers and the limiter of every answer while the sweep runs (a
    request and a response hook on the one Graph HTTP client of these clients)."""
    if not active:
        yield
        return
    hooks: dict[str, list[Callable[[Any], Awaitable[None]]]] = rotator.clients.graph_http().event_hooks
    hooks["request"].append(pacing.on_request)
    hooks["response"].append(pacing.on_response)
    try:
        yield
    finally:
        hooks["request"].remove(pacing.on_request)
        hooks["response"].remove(pacing.on_response)


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
