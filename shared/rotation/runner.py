"""One sweep as the timer runs it: the service's clients and settings, the real clock."""

from __future__ import annotations

from shared.azure.clients import get_clients
from shared.rotation.protocol import RotationOptions, Rotator
from shared.rotation.sweep import SweepReport, sweep


async def run_sweep() -> SweepReport:
    clients = get_clients()
    settings = clients.settings
    rotator = Rotator(clients, options=RotationOptions(test_timeout=settings.rotation_test_timeout_seconds))
    return await sweep(
        rotator,
        max_concurrency=settings.rotation_max_concurrency,
        budget_seconds=settings.rotation_sweep_budget_seconds,
    )
