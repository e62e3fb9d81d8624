"""The audit log's record of a credential change made through Graph: before it (fail closed), and after it however
it ends, without the text of an error."""

from __future__ import annotations

from datetime import UTC, datetime

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
