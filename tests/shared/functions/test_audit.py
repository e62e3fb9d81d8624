"""The audit routes and timer: what the daily retention run does when the audit log cannot take its record."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import AuditUnavailable


async def test_the_daily_run_purges_expired_sessions_even_when_the_audit_purge_cannot_run(monkeypatch) -> None:
    """The audit purge writes its own record first and stops when it cannot (fail closed); the sessions' purge,
    which has nothing to do with it, was skipped with it (review Z1)."""
    import shared.wiring as wiring
    from shared.functions.audit import bp

    purged: list[str] = []

    class Audit:
        async def purge_expired(self, days: int) -> None:
            raise AuditUnavailable("The audit log could not be written; nothing was done.")

        async def purge_expired_history(self, store: object, days: int) -> None:
            purged.append("history")

    class Sessions:
        async def purge_all_expired(self) -> None:
            purged.append("sessions")

    monkeypatch.setattr(wiring, "audit_log", lambda: Audit())
    monkeypatch.setattr(wiring, "rotation_history", lambda: None)
    monkeypatch.setattr(wiring, "sessions", lambda: Sessions())
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    timer: Any = next(b._function.get_user_function() for b in bp._function_builders
                      if b._function.get_function_name() == "enforce_audit_retention")
    with pytest.raises(AuditUnavailable):
        await timer(None)
    assert purged == ["history", "sessions"]


@pytest.mark.parametrize("failing", ["records", "history"])
async def test_the_daily_run_purges_the_rotation_history_and_the_sessions_whichever_other_purge_fails(
        monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """The rotation history is kept as long as the audit log, by the same setting and the same timer: each of the
    three purges runs whether or not the one before could."""
    import shared.wiring as wiring
    from shared.errors import UpstreamError
    from shared.functions.audit import bp

    purged: list[tuple[str, object]] = []
    history = object()

    class Audit:
        async def purge_expired(self, days: int) -> None:
            purged.append(("records", days))
            if failing == "records":
                raise AuditUnavailable("The audit log could not be written; nothing was done.")

        async def purge_expired_history(self, store: object, days: int) -> None:
            assert store is history
            purged.append(("history", days))
            if failing == "history":
                raise UpstreamError("Table Storage failed.")

    class Sessions:
        async def purge_all_expired(self) -> None:
            purged.append(("sessions", None))

    monkeypatch.setattr(wiring, "audit_log", lambda: Audit())
    monkeypatch.setattr(wiring, "rotation_history", lambda: history)
    monkeypatch.setattr(wiring, "sessions", lambda: Sessions())
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("AUDIT_RETENTION_DAYS", "90")
    from shared.settings import reset_settings

    reset_settings()
    timer: Any = next(b._function.get_user_function() for b in bp._function_builders
                      if b._function.get_function_name() == "enforce_audit_retention")
    try:
        with pytest.raises(AuditUnavailable if failing == "records" else UpstreamError):
            await timer(None)
    finally:
        reset_settings()
    assert purged == [("records", 90), ("history", 90), ("sessions", None)]
