"""The audit log's record of a credential change made through Graph: before it (fail closed), and after it however
it ends, without the text of an error."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.audit import AuditLog
from shared.errors import AuditUnavailable, LeaseLost
from shared.records import AuditRecord

OBJECT = "00000000-0000-0000-0000-0000000000aa"


class Records:
    def __init__(self, fail_started: bool = False) -> None:
        self.records: list[AuditRecord] = []
        self.fail_started = fail_started

    async def append(self, record: AuditRecord) -> None:
        if self.fail_started and record.outcome == "started":
            raise OSError("Table Storage is unreachable")
        self.records.append(record)

    def seen(self) -> list[tuple[str, str, str | None]]:
        return [(r.action, r.outcome, r.detail) for r in self.records]


def log_over(records: Records) -> AuditLog:
    return AuditLog(records, lambda: datetime(2026, 12, 1, tzinfo=UTC))  # type: ignore[arg-type]


async def test_a_change_is_recorded_before_and_after_with_what_it_made() -> None:
    records = Records()

    async def add() -> str:
        assert records.seen()[-1][1] == "started"  # recorded before it runs
        return "key-1"

    made = await log_over(records).credential_changed("credential.add", add, app="a", connection_id="c",
                                                      object_id=OBJECT, detail="add client secret 'x'",
                                                      key_id_of=lambda key: key)
    assert made == "key-1"
    assert records.seen() == [
        ("credential.add", "started", f"application {OBJECT}: add client secret 'x'"),
        ("credential.add", "succeeded", f"application {OBJECT}, keyId key-1"),
    ]


async def test_a_change_that_fails_is_recorded_as_failed_with_the_kind_of_error_only() -> None:
    records = Records()

    async def remove() -> None:
        raise LeaseLost("the lease ran out at 2026-12-01 with secret-looking text")

    with pytest.raises(LeaseLost):
        await log_over(records).credential_changed("credential.remove", remove, app="a", connection_id="c",
                                                   object_id=OBJECT, key_id="key-2")
    assert records.seen() == [
        ("credential.remove", "started", f"application {OBJECT}, keyId key-2"),
        ("credential.remove", "failed", f"application {OBJECT}, keyId key-2: LeaseLost"),
    ]


async def test_a_change_whose_record_cannot_be_written_is_not_made() -> None:
    made: list[str] = []

    async def add() -> str:
        made.append("added")
        return "key-3"

    with pytest.raises(AuditUnavailable):
        await log_over(Records(fail_started=True)).credential_changed("credential.add", add, app="a",
                                                                      connection_id="c", object_id=OBJECT)
    assert made == []


async def test_a_worker_that_dies_in_the_change_records_nothing_more() -> None:
    class Crash(BaseException):
        pass

    records = Records()

    async def add() -> str:
        raise Crash

    with pytest.raises(Crash):
        await log_over(records).credential_changed("credential.add", add, app="a", connection_id="c",
                                                   object_id=OBJECT)
    assert [outcome for _, outcome, _ in records.seen()] == ["started"]


async def test_the_change_s_own_error_is_raised_even_when_its_outcome_cannot_be_recorded() -> None:
    class Broken(Records):
        async def append(self, record: AuditRecord) -> None:
            if record.outcome == "failed":
                raise RuntimeError("the store broke in an unexpected way")
            await super().append(record)

    records = Broken()

    async def add() -> str:
        raise LeaseLost("lost")

    with pytest.raises(LeaseLost):
        await log_over(records).credential_changed("credential.add", add, app="a", connection_id="c",
                                                   object_id=OBJECT)
    assert [outcome for _, outcome, _ in records.seen()] == ["started"]


@pytest.mark.parametrize("error", [OSError("Table Storage is unreachable"), RuntimeError("a defect in the store")],
                         ids=["unreachable", "defect"])
async def test_an_outcome_that_cannot_be_recorded_is_logged_but_a_defect_is_raised(
        error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    """The record of an outcome is written as well as can be: Table Storage unreachable leaves it in the log
    alone; an error that is no failure of Azure or of the network (a defect) is not taken for one, and raised."""
    class Failing(Records):
        async def append(self, record: AuditRecord) -> None:
            raise error

    log = log_over(Failing())
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError):
            await log.record("connection.create", "succeeded", app="a", connection_id="c")
    else:
        with caplog.at_level("WARNING", logger="app_connections.audit"):
            kept = await log.record("connection.create", "succeeded", app="a", connection_id="c")
        assert kept.outcome == "succeeded"
        assert "The audit log could not be written" in caplog.text


class Searched(Records):
    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []
        self.windows: list[tuple[datetime, datetime]] = []

    async def query(self, start: datetime, end: datetime, **options: object) -> tuple[list[AuditRecord], None]:
        self.limits.append(int(str(options["limit"])))
        self.windows.append((start, end))
        return [], None


@pytest.mark.parametrize(("asked", "read"), [(None, 100), (1, 1), (1000, 1000)])
async def test_a_search_reads_pages_of_the_size_asked_for_or_100(asked: int | None, read: int) -> None:
    store = Searched()
    await log_over(store).search(None, None, limit=asked)
    assert store.limits == [read]


@pytest.mark.parametrize("asked", [0, -1, 1001])
async def test_a_search_refuses_a_page_size_out_of_1_to_1000_as_the_lists_do(asked: int) -> None:
    from shared.errors import InvalidRequest

    store = Searched()
    with pytest.raises(InvalidRequest) as refused:
        await log_over(store).search(None, None, limit=asked)
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [("/limit", "must be between 1 and 1000")]
    assert store.limits == []


async def test_a_search_from_after_to_is_refused() -> None:
    from datetime import timedelta

    from shared.errors import InvalidRequest

    now = datetime(2026, 12, 1, tzinfo=UTC)
    store = Searched()
    with pytest.raises(InvalidRequest) as refused:
        await log_over(store).search(now, now - timedelta(seconds=1))
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [("/from", "is after to")]
    assert store.windows == []
    await log_over(store).search(now, now)  # one instant is a window
    assert store.windows == [(now, now)]


async def test_a_search_reads_no_day_older_than_the_retention_nor_after_tomorrow() -> None:
    from datetime import timedelta

    now = datetime(2026, 12, 1, tzinfo=UTC)  # log_over's clock
    store = Searched()
    log = log_over(store)
    await log.search(datetime(1970, 1, 1, tzinfo=UTC), datetime(8999, 1, 1, tzinfo=UTC), retention_days=365)
    assert store.windows == [(now - timedelta(days=366), now + timedelta(days=1))]
    inside = (now - timedelta(days=3), now - timedelta(days=2))
    await log.search(*inside, retention_days=365)
    assert store.windows[-1] == inside
    assert await log.search(datetime(2000, 1, 1, tzinfo=UTC), datetime(2001, 1, 1, tzinfo=UTC),
                            retention_days=365) == ([], None)  # all of it purged long ago: nothing read
    assert len(store.windows) == 2


async def test_the_retention_run_deletes_batch_after_batch_until_none_is_left_or_its_time_is_up() -> None:
    from shared.audit import PURGE_BATCH

    class Expired(Records):
        def __init__(self, count: int) -> None:
            super().__init__()
            self.left = count
            self.calls: list[int] = []

        async def purge(self, before: datetime, limit: int = 10_000) -> int:
            self.calls.append(limit)
            taken = min(limit, self.left)
            self.left -= taken
            return taken

    many = Expired(3 * PURGE_BATCH + 5)  # more than a day's batch: 15,000 audited calls a day, say
    assert await log_over(many).purge_expired(365) == 3 * PURGE_BATCH + 5
    assert many.left == 0 and many.calls == [PURGE_BATCH] * 4
    slow = Expired(10 * PURGE_BATCH)
    ticks = iter(range(0, 10_000, 100))  # each batch takes 100 s
    assert await log_over(slow).purge_expired(365, budget_seconds=250,
                                              monotonic=lambda: float(next(ticks))) == 3 * PURGE_BATCH
    assert slow.left == 7 * PURGE_BATCH  # left for the next day's run, which goes on


async def test_every_audit_record_is_also_a_log_record_for_log_analytics(caplog: pytest.LogCaptureFixture) -> None:
    """DESIGN: an audit record is kept in Table Storage and sent to Log Analytics (a structured log record with
    ``audit=true`` and its fields, which the worker exports; review L found no test would notice it gone)."""
    from shared.audit import AuditLog, RequestContext, acting
    from shared.records import Actor
    from tests.fakes import build_fakes

    fakes = build_fakes()
    audit_log = AuditLog(fakes.audit, fakes.clock)
    with caplog.at_level("INFO", logger="app_connections.audit"), acting(RequestContext(
            Actor("u-1", "ada@contoso.example", "user", "AppConnections.Writer"))):
        written = await audit_log.record("connection.update", "started", app="azure-key-vault", connection_id="c-1",
                                         connection_name="prod", detail="rename")
    [logged] = [r for r in caplog.records if getattr(r, "audit", False)]
    assert fakes.audit.records == [written]
    fields = {k: v for k, v in vars(logged).items() if k.startswith("audit_")}
    assert (fields["audit_action"], fields["audit_outcome"], fields["audit_actorId"], fields["audit_connectionId"]
            ) == ("connection.update", "started", "u-1", "c-1"), fields


async def test_a_record_s_detail_is_stored_redacted_as_its_log_copy_is() -> None:
    """(Audit review.) Upstream error text reaches a detail (Entra's error_description, Graph's messages): anything
    secret-shaped in it was kept in clear in the audit table while the log copy was redacted."""
    records = Records()
    await log_over(records).record("oauth.complete", "failed",
                                   detail="AADSTS9999999: client_secret=Sup3r~S3cretValue.abc refused")
    [(_, _, detail)] = records.seen()
    assert detail is not None and "Sup3r~S3cretValue.abc" not in detail and "[REDACTED]" in detail


async def test_the_retention_run_is_recorded_before_it_deletes_and_with_its_count_after() -> None:
    """(Audit review 4.) A purge deleted records and left none that said so: a retention lowered to a day wiped
    the log without a trace in it. Its record says the retention and the cut-off, before anything is deleted."""

    class Expired(Records):
        def __init__(self, fail_started: bool = False) -> None:
            super().__init__(fail_started)
            self.purged: list[datetime] = []

        async def purge(self, before: datetime, limit: int = 10_000) -> int:
            assert self.seen()[-1][:2] == ("audit.purge", "started")  # recorded before
            self.purged.append(before)
            return 7

    expired = Expired()
    assert await log_over(expired).purge_expired(30) == 7
    assert expired.seen() == [
        ("audit.purge", "started", "retention 30 days: records before 2026-11-01T00:00:00Z"),
        ("audit.purge", "succeeded", "retention 30 days: records before 2026-11-01T00:00:00Z: 7 deleted"),
    ]
    unrecorded = Expired(fail_started=True)
    with pytest.raises(AuditUnavailable):
        await log_over(unrecorded).purge_expired(30)
    assert unrecorded.purged == []  # no record, nothing deleted


async def test_a_user_agent_is_stored_redacted_and_escaped_as_the_fields_a_caller_chooses_are() -> None:
    """(Fuzzing review.) ``User-Agent: deploy-tool/1.0 client_secret=...`` was redacted in the log copy of a record
    but stored and answered by GET /api/v1/audit-logs as sent; a control character in it was stored as it came."""
    from shared.audit import RequestContext, acting
    from shared.records import Actor

    records = Records()
    agent = "deploy-tool/1.0 client_secret=Zq9Secret7v2ab\x1b[31m"
    with acting(RequestContext(Actor("u-1", "ada", "user"), user_agent=agent)):
        await log_over(records).record("connection.validate", "started")
    stored = records.records[0].user_agent
    assert stored is not None and "Zq9Secret7v2ab" not in stored and "[REDACTED]" in stored and "\x1b" not in stored


async def test_a_lone_surrogate_in_any_field_of_a_record_is_stored_escaped() -> None:
    """(Fuzzing review.) A lone surrogate in a record (a User-Agent, or a name in a token) was written to Table
    Storage, and every read of that day's records failed after it (a 502) for the whole retention."""
    from shared.audit import RequestContext, acting
    from shared.records import Actor
    from shared.store.audit import to_entity

    records = Records()
    context = RequestContext(Actor("u-\ud800", "Jos\u00e9 \udfff", "user", "AppConnections.\ud800"),
                             client_ip="fe80::1%\ud800", user_agent="agent/\ud800", request_id="r-\ud800",
                             trace_id="t-\ud800")
    with acting(context):
        await log_over(records).record("connection.\ud800", "started", app="a\ud800", connection_id="c\ud800",
                                       connection_name="n\ud800", detail="d\ud800")
    entity = to_entity(records.records[0])
    texts = [value for value in entity.values() if isinstance(value, str)]
    assert len(texts) == 16 and all(text.encode("utf-8") for text in texts)  # no field left out: all UTF-8
    assert entity["ActorName"] == "Jos\u00e9 \\udfff" and entity["UserAgent"] == "agent/\\ud800"
    assert entity["ConnectionId"] == "c\\ud800" and entity["Detail"] == "d\\ud800"


# -- the rotation history's retention (``AuditLog.purge_expired_history``) ------------------------------------------
def _attempt(connection_id: str, started: datetime, outcome: str = "succeeded") -> Any:
    import uuid

    from shared.records import RotationEvent

    return RotationEvent(rotation_id=str(uuid.uuid4()), attempt=1, connection_id=connection_id,
                         app="azure-key-vault", started_at=started, finished_at=None, outcome=outcome,
                         trigger="schedule")


async def test_the_history_purge_deletes_the_entries_of_attempts_before_the_cut_off_but_the_newest_and_running(
) -> None:
    """(Retention of the history, which grew for ever: 365 entries a year for a connection rotated daily.) The entries
    of attempts started before the audit log's cut-off go, a hundred of a connection per request; one at the cut-off
    stays; so do each connection's latest (the one its rotation state can refer to is among them) and ``running``
    ones."""
    from datetime import timedelta

    from tests.fakes import build_fakes

    fakes = build_fakes()
    fakes.clock.now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    cutoff = datetime(2026, 11, 1, tzinfo=UTC)  # 30 days back, at the start of that day (as the records')
    kept = [_attempt("a", cutoff), _attempt("a", cutoff + timedelta(days=2)),
            _attempt("b", cutoff - timedelta(days=10), "interrupted"),  # b's newest: kept, however old
            # and the attempt after it by the clock of an instance 30 s behind (which b's state may hold)
            _attempt("b", cutoff - timedelta(days=10, seconds=30), "interrupted"),
            _attempt("c", cutoff - timedelta(days=40), "running"), _attempt("c", cutoff + timedelta(hours=1)),
            _attempt("d", cutoff + timedelta(days=1))]
    gone = [_attempt("a", cutoff - timedelta(milliseconds=1)), _attempt("b", cutoff - timedelta(days=20)),
            _attempt("c", cutoff - timedelta(days=50), "failed"),
            *(_attempt("d", cutoff - timedelta(days=1, minutes=n)) for n in range(250))]
    for event in kept + gone:
        await fakes.history.record(event)
    log = AuditLog(fakes.audit, fakes.clock)
    fakes.world.calls.clear()
    assert await log.purge_expired_history(fakes.history, 30) == len(gone) == 253
    assert sorted(fakes.history.rows.values(), key=lambda e: e.started_at) == sorted(kept, key=lambda e: e.started_at)
    calls = [call for call in fakes.world.calls if call.startswith(("audit.", "history."))]
    # Recorded before anything is read or deleted; d's 250 in three requests (the fake refuses more than 100).
    assert calls == ["audit.append", "history.expired"] + ["history.delete"] * 6 + ["audit.append"], calls
    what = "retention 30 days: entries of attempts started before 2026-11-01T00:00:00Z"
    assert [(r.action, r.outcome, r.detail, r.actor.id) for r in fakes.audit.records] == [
        ("history.purge", "started", what, "system"), ("history.purge", "succeeded", f"{what}: 253 deleted", "system")]


async def test_a_history_purge_whose_record_cannot_be_written_deletes_nothing_and_one_that_fails_says_so() -> None:
    from datetime import timedelta

    from shared.errors import UpstreamError
    from tests.fakes import build_fakes

    fakes = build_fakes()
    fakes.clock.now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    for days in range(100, 300):
        await fakes.history.record(_attempt("a", fakes.clock.now - timedelta(days=days)))
    await fakes.history.record(_attempt("a", fakes.clock.now))
    log = AuditLog(fakes.audit, fakes.clock)
    fakes.world.fail_next("audit.append", OSError("Table Storage is unreachable"))
    with pytest.raises(AuditUnavailable):
        await log.purge_expired_history(fakes.history, 30)
    assert len(fakes.history.rows) == 201 and "history.expired" not in fakes.world.calls
    fakes.world.fail_next("history.delete", UpstreamError("Table Storage failed."), times=1)
    fakes.world.calls.clear()
    with pytest.raises(UpstreamError):
        await log.purge_expired_history(fakes.history, 30)
    assert [(r.outcome, (r.detail or "").split(": ", 2)[-1]) for r in fakes.audit.records] == [
        ("started", "entries of attempts started before 2026-11-01T00:00:00Z"),
        ("failed", "0 deleted, then Table Storage failed.")]
    assert await log.purge_expired_history(fakes.history, 30) == 200  # the next run deletes them
    assert len(fakes.history.rows) == 1


async def test_a_long_history_purge_logs_its_progress_and_stops_at_its_budget_and_the_next_run_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    from datetime import timedelta

    from shared.audit import PURGE_BATCH
    from tests.fakes import build_fakes

    fakes = build_fakes()
    fakes.clock.now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    old = fakes.clock.now - timedelta(days=400)
    for n in range(2 * PURGE_BATCH + 5000):  # a year's daily rotations of 70 connections, say, in one partition
        await fakes.history.record(_attempt("a", old - timedelta(minutes=n)))
    await fakes.history.record(_attempt("a", fakes.clock.now))
    log = AuditLog(fakes.audit, fakes.clock)
    ticks = iter(range(0, 1_000_000))  # a second per request
    with caplog.at_level("INFO", logger="app_connections.audit"):
        deleted = await log.purge_expired_history(fakes.history, 365, budget_seconds=220,
                                                  monotonic=lambda: float(next(ticks)))
    assert deleted == 22_000 and len(fakes.history.rows) == 3001  # 220 requests of a hundred
    progress = [r.getMessage() for r in caplog.records if "so far" in r.getMessage()]
    assert progress == ["Rotation history retention: 10000 entries deleted so far",
                        "Rotation history retention: 20000 entries deleted so far"]
    assert fakes.audit.records[-1].detail is not None and fakes.audit.records[-1].detail.endswith(
        ": 22000 deleted, more may be left for the next run")
    fakes.clock.advance(timedelta(days=1))
    assert await log.purge_expired_history(fakes.history, 365) == 3000
    assert [e.started_at for e in fakes.history.rows.values()] == [fakes.clock.now - timedelta(days=1)]


async def test_a_search_s_continuation_token_is_taken_by_that_search_only_while_the_clock_moves() -> None:
    """A token names its search: the filters as asked (``from`` and ``to`` as given, not their defaults, which move
    with the clock between two pages, and the apps searched). Handed to a search with other filters it is a 400 on
    ``/continuationToken``; the same search a minute later takes it."""
    from datetime import timedelta

    from shared.audit import RequestContext, acting
    from shared.errors import InvalidRequest
    from shared.records import Actor
    from tests.fakes import build_fakes

    fakes = build_fakes()
    audit_log = AuditLog(fakes.audit, fakes.clock)
    with acting(RequestContext(Actor("u-1", "ada@contoso.example", "user", "AppConnections.Writer"))):
        for connection in ("c-1", "c-1", "c-1", "c-2"):
            await audit_log.record("connection.update", "started", app="azure-key-vault", connection_id=connection)
            fakes.world.clock.advance(timedelta(seconds=1))
    page, token = await audit_log.search(None, None, connection_id="c-1", limit=1)
    assert len(page) == 1 and token
    for other in ({"connection_id": "c-2"}, {"connection_id": "c-1", "action": "connection.update"},
                  {"connection_id": "c-1", "apps": ["azure-key-vault"]}):
        with pytest.raises(InvalidRequest) as refused:
            await audit_log.search(None, None, continuation=token, **other)  # type: ignore[arg-type]
        assert [e.pointer for e in refused.value.errors] == ["/continuationToken"], other
    with pytest.raises(InvalidRequest):
        await audit_log.search(fakes.clock() - timedelta(days=1), None, connection_id="c-1", continuation=token)
    fakes.world.clock.advance(timedelta(minutes=1))
    rest, _ = await audit_log.search(None, None, connection_id="c-1", continuation=token)
    assert len(rest) == 2
