"""The timer sweep: claim what is due, rotate with bounded concurrency, stop claiming before the budget ends.

It reads only the schedule entries that are due (a range query), drops stale ones, and resumes rotations
that a crash left half done (their entry stays due and their lease runs out). The entry of a connection left
marked as being deleted is moved an hour forward (``PUT_OFF``), not left at the head of the index. When
Microsoft Graph throttles, the sweep paces its Graph requests and runs fewer rotations at once
(``shared.rotation.pacing``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

from shared import telemetry
from shared.errors import AuditUnavailable, LeaseLost, NotFound, ServiceError
from shared.ports import DueEntry
from shared.records import MIGRATION_STEPS, PUT_OFF, STATUS_DELETING, ConnectionRecord
from shared.rotation.migration import Migrator
from shared.rotation.pacing import paced_fan_out
from shared.rotation.protocol import Rotator, only_the_clean_up_due

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
    entries = await rotator.adapters.schedule.due(now, limit=limit)
    report = SweepReport(due=len(entries))
    telemetry.record_sweep_start(len(entries))
    log.info("Rotation sweep: %d due at %s", len(entries), now.astimezone(UTC).isoformat())

    async def handle(entry: DueEntry) -> None:
        await _rotate_entry(rotator, entry, report)

    fan = await paced_fan_out(entries, handle, paced=rotator.adapters.directory.paced,
                              max_concurrency=max_concurrency, budget_seconds=budget_seconds, monotonic=monotonic,
                              what="Rotation sweep")
    report.left_for_next_sweep = fan.left
    report.throttled, report.lowest_concurrency, report.paced = fan.throttled, fan.lowest_concurrency, fan.paced
    log.info(
        "Rotation sweep done in %.1f s: %d succeeded, %d failed, %d skipped, %d stale, %d left for the next sweep",
        monotonic() - started, report.succeeded, report.failed, report.skipped, report.stale,
        report.left_for_next_sweep,
    )
    telemetry.record_sweep_end(monotonic() - started, report.succeeded, report.failed)
    return report


async def _rotate_entry(rotator: Rotator, entry: DueEntry, report: SweepReport) -> None:
    """One due entry; whatever fails in it (a read of the connection, the removal of a stale entry) ends its turn,
    not the sweep: the entry stays due for the next one."""
    try:
        await _rotate_due(rotator, entry, report)
    except LeaseLost:
        report.skipped += 1
    except Exception:
        log.exception("Rotation of %s connection %s failed unexpectedly", entry.app, entry.connection_id)
        report.failed += 1
        report.outcomes[entry.connection_id] = "error"


async def _rotate_due(rotator: Rotator, entry: DueEntry, report: SweepReport) -> None:
    adapters = rotator.adapters
    try:
        record = await adapters.connections.get(entry.app, entry.connection_id)
    except NotFound:
        await adapters.schedule.remove(entry.key)
        report.stale += 1
        return
    state = record.rotation
    if state.schedule_key != entry.key or not (state.enabled or state.in_progress or state.cleaning_up):
        await adapters.schedule.remove(entry.key)
        report.stale += 1
        return
    if record.status == STATUS_DELETING:
        # Nothing runs on it until a DELETE ends that state, which may never be sent again (its 502 said to): left
        # due, its entry would be read first by every sweep and, with enough of them, keep every other due entry
        # from being read (review sweeps 6). Moved forward, unless a DELETE may still be at work on it (left_marked).
        if state.left_marked(rotator.now()):
            await rotator.put_off(record, rotator.now() + PUT_OFF)
        report.skipped += 1
        return
    if only_the_clean_up_due(record, rotator.now()):  # the clean-up of the application a change left
        try:
            result = await rotator.retire_due(record)
        except AuditUnavailable:  # nothing done: the entry stays due for the next sweep
            log.warning("Clean-up of %s connection %s put off: the audit log cannot be written", record.app, record.id)
            report.skipped += 1
            report.outcomes[entry.connection_id] = "skipped"
            return
        report.outcomes[entry.connection_id] = "retired" if result is not None else "skipped"
        report.skipped += result is None
        report.succeeded += result is not None
        return
    if state.step in MIGRATION_STEPS:  # a migration to the federated method that stopped: finish it
        await _resume_migration(rotator, record, report)
        return
    claimed = await rotator.claim(record, trigger="schedule")
    if claimed is None:
        report.skipped += 1
        return
    report.claimed += 1
    attempt = await rotator.run(claimed)
    status = attempt.record.rotation.status or ""
    report.outcomes[entry.connection_id] = status
    if attempt.succeeded:
        report.succeeded += 1
    else:
        report.failed += 1


async def _resume_migration(rotator: Rotator, record: ConnectionRecord, report: SweepReport) -> None:
    """(Engineer B, issue 14.) The migration's own journal, resumed by :class:`~shared.rotation.migration.Migrator`
    with this rotator's identity and options."""
    if record.rotation.leased(rotator.now()):
        report.skipped += 1
        return
    migrator = Migrator(rotator.adapters, options=rotator.options, owner=rotator.owner, checkpoint=rotator.checkpoint)
    try:
        done = await migrator.resume(record)
    except ServiceError as error:
        log.warning("Migration of %s connection %s failed again: %s", record.app, record.id, error.detail)
        report.failed += 1
        report.outcomes[record.id] = "failed"
        return
    report.succeeded += 1
    report.outcomes[record.id] = done.rotation.status or ""
