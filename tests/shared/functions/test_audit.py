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

    class Sessions:
        async def purge_all_expired(self) -> None:
            purged.append("sessions")

    monkeypatch.setattr(wiring, "audit_log", lambda: Audit())
    monkeypatch.setattr(wiring, "sessions", lambda: Sessions())
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    timer: Any = next(b._function.get_user_function() for b in bp._function_builders
                      if b._function.get_function_name() == "enforce_audit_retention")
    with pytest.raises(AuditUnavailable):
        await timer(None)
    assert purged == ["sessions"]
