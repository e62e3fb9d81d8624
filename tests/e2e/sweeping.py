"""Sweeps of the e2e tests, on a clock stopped at a time of the test's choosing, over the session's tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime
from typing import Any

from shared import wiring
from shared.azure.clients import AzureClients
from shared.rotation.protocol import Checkpoint, RotationOptions, Rotator


class DueOnly:
    """The schedule index, of which a sweep reads only the entries of ``connections``: a sweep at a time weeks
    ahead would otherwise take every connection the session's other tests left due by then (a certificate made
    at that time is not valid yet for the stand-in: each waited its test's 300 s, and the sweep's budget ran out
    before the test's own connection)."""

    def __init__(self, index: Any, connections: Collection[str]) -> None:
        self.index, self.connections = index, set(connections)

    async def due(self, now: datetime, limit: int = 1000) -> list[Any]:
        return [e for e in await self.index.due(now, limit=10_000) if e.connection_id in self.connections][:limit]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)


def rotator_at(clients: AzureClients, at: datetime | None = None, checkpoint: Checkpoint | None = None,
               options: RotationOptions | None = None, only: Collection[str] | None = None) -> Rotator:
    """The service's rotator over ``clients``, its clock stopped at ``at`` (the real clock when None); its sweeps
    take only the connections ``only`` names, when it names them."""
    clock = None if at is None else (lambda: at)
    adapters = wiring.adapters(clients)
    if only is not None:
        adapters = dataclasses.replace(adapters, schedule=DueOnly(adapters.schedule, only))
    return wiring.services(adapters, clock=clock, checkpoint=checkpoint, options=options).rotator
