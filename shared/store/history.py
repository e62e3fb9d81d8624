"""Rotation history: one entity per rotation, newest first, written idempotently (keyed by the rotation).

Table ``{prefix}Rotations``, partition = connection id, RowKey = inverted start time + rotation id, so a
resumed rotation writes the same row again rather than a second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.store.tables import decode_token, encode_token

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

HISTORY_TABLE = "Rotations"
_MAX_MS = 10**14


@dataclass(frozen=True)
class RotationEvent:
    rotation_id: str
    connection_id: str
    app: str
    started_at: datetime
    finished_at: datetime
    outcome: str  # "succeeded" | "failed"
    trigger: str  # "enable" | "schedule" | "manual"
    new_key_id: str | None
    revoked_key_id: str | None
    message: str | None

    @property
    def duration_ms(self) -> int:
        return int((self.finished_at - self.started_at).total_seconds() * 1000)

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime) -> str:
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

        return {
            "id": self.rotation_id,
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
            "outcome": self.outcome,
            "trigger": self.trigger,
            "newKeyId": self.new_key_id,
            "revokedKeyId": self.revoked_key_id,
            "message": self.message,
            "durationMs": self.duration_ms,
        }


def _row_key(started_at: datetime, rotation_id: str) -> str:
    inverted = _MAX_MS - int(started_at.timestamp() * 1000)
    return f"{inverted:015d}|{rotation_id}"


class RotationHistory:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def record(self, event: RotationEvent) -> None:
        table = await self._clients.table(HISTORY_TABLE)
        await table.upsert_entity(
            {
                "PartitionKey": event.connection_id,
                "RowKey": _row_key(event.started_at, event.rotation_id),
                "RotationId": event.rotation_id,
                "App": event.app,
                "StartedAt": event.started_at,
                "FinishedAt": event.finished_at,
                "Outcome": event.outcome,
                "Trigger": event.trigger,
                "NewKeyId": event.new_key_id,
                "RevokedKeyId": event.revoked_key_id,
                "Message": event.message,
            }
        )

    async def page(
        self, connection_id: str, limit: int, continuation: str | None
    ) -> tuple[list[RotationEvent], str | None]:
        table = await self._clients.table(HISTORY_TABLE)
        pages = table.query_entities(
            "PartitionKey eq @c", parameters={"c": connection_id}, results_per_page=limit
        ).by_page(continuation_token=decode_token(continuation))
        events: list[RotationEvent] = []
        async for page in pages:
            async for e in page:
                events.append(
                    RotationEvent(
                        rotation_id=str(e["RotationId"]), connection_id=connection_id, app=str(e["App"]),
                        started_at=e["StartedAt"], finished_at=e["FinishedAt"], outcome=str(e["Outcome"]),
                        trigger=str(e.get("Trigger") or ""), new_key_id=e.get("NewKeyId"),
                        revoked_key_id=e.get("RevokedKeyId"), message=e.get("Message"),
                    )
                )
            break
        return events, encode_token(getattr(pages, "continuation_token", None))

    async def delete_all(self, connection_id: str) -> None:
        table = await self._clients.table(HISTORY_TABLE)
        async for e in table.query_entities("PartitionKey eq @c", parameters={"c": connection_id}, select=["RowKey"]):
            await table.delete_entity(connection_id, str(e["RowKey"]))
