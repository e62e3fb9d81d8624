"""The timers' entry points as ``shared.wiring`` runs them, over the in-memory fakes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared import wiring
from shared.errors import UpstreamError
from tests.fakes import build_fakes


async def test_the_rotation_timer_ends_well_when_its_notifications_cannot_be_delivered_now(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """(Review N.) An outbox that could not be read after the rotation sweep failed the timer's invocation, though
    the sweep was done: the notifications stay queued for the next sweep, as the health sweep already had it."""
    from shared.notify import Notifier

    built = wiring.services(build_fakes({}).adapters)
    monkeypatch.setattr(wiring, "services", lambda *args, **kwargs: built)

    async def unreadable(self: Any, *args: Any, **kwargs: Any) -> int:
        raise UpstreamError("Table Storage answered 503 (injected)")

    monkeypatch.setattr(Notifier, "deliver", unreadable)
    with caplog.at_level(logging.WARNING, logger="app_connections.notifications"):
        report = await wiring.run_sweep()
    assert report.due == 0
    assert "Notifications not delivered now (Table Storage answered 503 (injected)); they stay queued" in caplog.text
