"""Connection metadata in Table Storage (never a secret).

Table ``{prefix}Connections``, partition = app:
- a connection entity per connection, RowKey = connection id;
- a name-index entity per connection, RowKey = ``~name~{lowercase name}``, written in the same
  entity-group transaction, so names are unique per app atomically.
Every update is guarded by the entity's ETag: a concurrent change gives a 409, never a lost update.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.errors import ConcurrentChange, FieldError, InvalidRequest, NameTaken, NotFound, shown
from shared.records import (
    Actor,
    Authorization,
    ConnectionRecord,
    HealthState,
    Notification,
    RotationState,
    restore,
)

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from shared.azure.clients import AzureClients

CONNECTIONS_TABLE = "Connections"
NAME_PREFIX = "~name~"  # sorts after every connection id (ids are lowercase hex GUIDs)


_COLUMNS = {
    "name": "Name",
    "method": "Method",
    "tenant_id": "TenantId",
    "client_id": "ClientId",
    "created_at": "CreatedAt",
    "updated_at": "UpdatedAt",
    "secret_name": "SecretName",
    "secret_version": "SecretVersion",
    "description": "Description",
    "version": "Version",
    "status": "Status",
    "status_message": "StatusMessage",
    "last_validated_at": "LastValidatedAt",
    "superseded_versions": "SupersededVersions",
}
# The rotation state, one column per field: ``Rot`` + the field's name in CamelCase (``RotKeyId``).
_ROTATION_COLUMNS = {
    f.name: "Rot" + "".join(part.capitalize() for part in f.name.split("_")) for f in fields(RotationState)
}


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value if value.tzinfo is UTC else value.astimezone(UTC)
    return value


# The health state, one column per field: ``Hlth`` + the field's name in CamelCase (``HlthStatus``).
_HEALTH_COLUMNS = {
    f.name: "Hlth" + "".join(part.capitalize() for part in f.name.split("_")) for f in fields(HealthState)
}
OUTBOX_PREFIX = "~outbox~"  # the notifications waiting to be delivered, in the partition of their connection


def _actor_columns(prefix: str, actor: Actor | None) -> dict[str, Any]:
    if actor is None:
        return {}
    return {f"{prefix}Id": actor.id, f"{prefix}Name": actor.name, f"{prefix}Type": actor.type}


def _actor(entity: Any, prefix: str) -> Actor | None:
    get = entity.get
    if not get(prefix + "Id"):
        return None
    return restore(Actor, {"id": str(entity[prefix + "Id"]), "name": str(get(prefix + "Name") or ""),
                           "type": str(get(prefix + "Type") or "")})


def to_entity(record: ConnectionRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": record.app, "RowKey": record.id, "Kind": "connection"}
    for attr, column in _COLUMNS.items():
        value = getattr(record, attr)
        if value is not None:
            entity[column] = value
    for attr, column in _ROTATION_COLUMNS.items():
        value = getattr(record.rotation, attr)
        if value is not None:
            entity[column] = value
    for attr, column in _HEALTH_COLUMNS.items():
        value = getattr(record.health, attr)
        if value is not None:
            entity[column] = value
    entity.update(_actor_columns("CreatedBy", record.created_by))
    entity.update(_actor_columns("UpdatedBy", record.updated_by))
    if record.authorized_by is not None:
        entity.update({"AuthorizedByOid": record.authorized_by.oid, "AuthorizedByUpn": record.authorized_by.upn,
                       "AuthorizedByTenantId": record.authorized_by.tenant_id})
    return {key: value for key, value in entity.items() if value is not None}


_ACTOR_COLUMNS = tuple(f"{prefix}{part}" for prefix in ("CreatedBy", "UpdatedBy") for part in ("Id", "Name", "Type"))
_AUTHORIZATION_COLUMNS = ("AuthorizedByOid", "AuthorizedByUpn", "AuthorizedByTenantId")
# Every column a record is read from but its keys (an entity's other columns, such as Kind, are not): which of the
# record's parts it fills (0: the record, 1: its rotation state, 2: its health state, 3: the actors and the
# consent, by column) and the field.
PART_OF: dict[str, tuple[int, str]] = {
    **{column: (0, attr) for attr, column in _COLUMNS.items()},
    **{column: (1, attr) for attr, column in _ROTATION_COLUMNS.items()},
    **{column: (2, attr) for attr, column in _HEALTH_COLUMNS.items()},
    **{column: (3, column) for column in (*_ACTOR_COLUMNS, *_AUTHORIZATION_COLUMNS)},
}
RecordParts = tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]


def from_entity(entity: Any) -> ConnectionRecord:
    """The record of a connection entity: the SDK's ``TableEntity`` or ``shared.store.table_reads.Entity`` (a
    mapping with ``metadata``)."""
    return record_of_columns(entity, entity.metadata.get("etag") if hasattr(entity, "metadata") else None)


def record_parts(app: Any, connection_id: Any) -> RecordParts:
    """The empty parts :func:`record_of_parts` builds a record from, with its keys."""
    return {"app": app, "id": connection_id}, {}, {}, {}


def record_of_columns(columns: Mapping[str, Any], etag: str | None) -> ConnectionRecord:
    """The record of a connection entity's typed columns (its keys and those of ``PART_OF`` it has; others are
    ignored) and its ETag."""
    parts = record_parts(columns["PartitionKey"], columns["RowKey"])
    part_of = PART_OF.get
    for column, value in columns.items():
        target = part_of(column)
        if target is not None:
            if isinstance(value, datetime) and value.tzinfo is not UTC:
                value = value.astimezone(UTC)
            parts[target[0]][target[1]] = value
    return record_of_parts(parts, etag)


def record_of_parts(parts: RecordParts, etag: str | None) -> ConnectionRecord:
    """The record of a connection entity's typed columns sorted into its parts by ``PART_OF`` (date-times in
    UTC), and its ETag; built without the records' ``__init__`` (``shared.records.restore``), as a read of a page
    does it 50 times."""
    values, rotation, health, others = parts
    if "key_made" not in rotation:  # written before the service recorded it: unknown (RotationState.made_in_use)
        rotation["key_made"] = None
    get = others.get
    authorized = None
    if get("AuthorizedByOid"):
        authorized = restore(Authorization, {"oid": str(others["AuthorizedByOid"]), "upn": get("AuthorizedByUpn"),
                                             "tenant_id": get("AuthorizedByTenantId")})
    values.update(rotation=restore(RotationState, rotation), health=restore(HealthState, health),
                  created_by=_actor(others, "CreatedBy"), updated_by=_actor(others, "UpdatedBy"),
                  authorized_by=authorized, etag=etag)
    return restore(ConnectionRecord, values)


def _name_entity(app: str, name: str, connection_id: str) -> dict[str, Any]:
    return {"PartitionKey": app, "RowKey": NAME_PREFIX + name.lower(), "Kind": "name", "ConnectionId": connection_id}


def encode_token(token: Any, partition: str) -> str | None:
    """The continuation token of a page of the list that reads ``partition`` (an app's connections, a connection's
    rotations): Table Storage's, with the partition it is for (its own keys are opaque: the service cannot tell
    from them which list gave them)."""
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps({LIST: partition, **token}, separators=(",", ":")).encode()
                                    ).decode().rstrip("=")


def invalid_token(detail: str = "The continuation token is not valid; start again without it.") -> InvalidRequest:
    """The 400 of a continuation token the list did not hand out, on the query parameter that carried it."""
    return InvalidRequest(detail, errors=[FieldError("/continuationToken", "is not a token this list handed out")])


def decode_token(raw: str | None, partition: str) -> Any:
    """A page's continuation token as Table Storage gave it (its next PartitionKey and RowKey; either may be
    absent), or a 400 for one the service did not hand out for this list: a token of another list (another app's,
    a connection's rotations), read on in this one, would answer an empty last page as if the list had ended. One
    an older version handed out names no list: it is this list's when its next PartitionKey is this list's own
    partition (each list reads one partition), and another's, or unknown, otherwise."""
    if not raw:
        return None
    token = token_json(raw)
    if isinstance(token, dict) and LIST not in token and token.get("PartitionKey") == partition:
        token[LIST] = partition  # an older version's, of this list
    if not (isinstance(token, dict) and token.pop(LIST, None) == partition and token
            and set(token) <= {"PartitionKey", "RowKey"}
            and all(value is None or token_text(value) for value in token.values())
            and any(value is not None for value in token.values())):
        raise invalid_token()
    return token


# The longest continuation token the service hands out: two keys of Table Storage's at most 1 KiB each and the
# list's partition (an app, a connection's id: short), as JSON, in base64url (4 characters for every 3 bytes).
LIST = "list"
MAX_TOKEN = 4 * (2 * 1024 + 256) // 3
_TOKEN_TEXT = re.compile(r"[\x20-\x7e]{0,1024}")


def token_json(raw: str) -> Any:
    """What a continuation token holds (base64url JSON), or None when it cannot be one the service handed out:
    too long, not base64url, not JSON, or JSON nested past the parser's depth (forged, and never read further)."""
    if len(raw) > MAX_TOKEN:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None


def token_text(value: object) -> bool:
    """Whether a value in a continuation token can be a key Table Storage gave: printable ASCII of a key's length at
    most (a lone surrogate or a control character, forged, cannot even be sent)."""
    return isinstance(value, str) and _TOKEN_TEXT.fullmatch(value) is not None


# Characters Table Storage refuses in a PartitionKey or RowKey (it answers 500/400 rather than 404), and a lone
# surrogate (not Unicode text: no request can carry it).
_KEY_FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def usable_key(value: str) -> bool:
    """Whether ``value`` can be a RowKey at all: an id or name that cannot be one names nothing (404)."""
    return 0 < len(value) <= 512 and not _KEY_FORBIDDEN.search(value)


def name_key(name: str) -> str | None:
    """The RowKey part of the name a lookup asks for (names are found in any case), or None for a value that no
    name can be: not a key (``usable_key``), or not ASCII, which Unicode would lowercase into a name (the Kelvin
    sign, U+212A, into ``k``). Names are ASCII (a slug), so only ASCII letters change case."""
    return name.lower() if name.isascii() and usable_key(name) else None


def outbox_key(item: Notification) -> str:
    return f"{OUTBOX_PREFIX}{int(item.at.timestamp() * 1000):015d}|{item.id}"


def outbox_entity(app: str, item: Notification) -> dict[str, Any]:
    entity = {"PartitionKey": app, "RowKey": outbox_key(item), "Kind": "notification", "Event": item.event,
              "ConnectionId": item.connection_id, "Name": item.name, "Status": item.status,
              "Message": item.message, "At": item.at, "Attempts": item.attempts,
              "NextAttemptAt": item.next_attempt_at}
    return {key: value for key, value in entity.items() if value is not None}


def notification_of(entity: Any) -> Notification:
    return Notification(
        event=str(entity["Event"]), app=str(entity["PartitionKey"]), connection_id=str(entity["ConnectionId"]),
        name=str(entity.get("Name") or ""), status=str(entity.get("Status") or ""), message=entity.get("Message"),
        at=_utc(entity["At"]), id=str(entity["RowKey"]).rsplit("|", 1)[1], attempts=int(entity.get("Attempts") or 0),
        next_attempt_at=_utc(entity.get("NextAttemptAt")),
        etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
    )


class ConnectionsTable:
    """Reads and writes connection entities of one app partition at a time."""

    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def _table(self) -> TableClient:
        return await self._clients.table(CONNECTIONS_TABLE)

    async def insert(self, record: ConnectionRecord) -> ConnectionRecord:
        from azure.data.tables import TableTransactionError

        table = await self._table()
        try:
            results = await table.submit_transaction(
                [("create", to_entity(record)), ("create", _name_entity(record.app, record.name, record.id))]
            )
        except TableTransactionError as error:
            if error.index == 1:
                raise NameTaken(f"A connection named '{record.name}' already exists for {record.app}.") from None
            raise
        return record.evolve(etag=results[0].get("etag"))

    async def get(self, app: str, connection_id: str) -> ConnectionRecord:
        from azure.core.exceptions import ResourceNotFoundError

        if connection_id.startswith(NAME_PREFIX[0]) or not usable_key(connection_id):
            raise NotFound(f"No {app} connection has the id '{shown(connection_id)}'.")
        table = await self._table()
        try:
            entity = await table.get_entity(app, connection_id)
        except ResourceNotFoundError:
            raise NotFound(f"No {app} connection has the id '{shown(connection_id)}'.") from None
        return from_entity(entity)

    async def get_by_name(self, app: str, name: str) -> ConnectionRecord:
        from azure.core.exceptions import ResourceNotFoundError

        key = name_key(name)
        if key is None:
            raise NotFound(f"No {app} connection is named '{shown(name)}'.")
        table = await self._table()
        try:
            index = await table.get_entity(app, NAME_PREFIX + key)
        except ResourceNotFoundError:
            raise NotFound(f"No {app} connection is named '{shown(name)}'.") from None
        return await self.get(app, str(index["ConnectionId"]))

    async def list_page(
        self, app: str, limit: int, continuation: str | None
    ) -> tuple[list[ConnectionRecord], str | None]:
        table = await self._table()
        pages = table.query_entities(
            "PartitionKey eq @app and RowKey lt @names",
            parameters={"app": app, "names": NAME_PREFIX[0]},
            results_per_page=limit,
        ).by_page(continuation_token=decode_token(continuation, app))
        records: list[ConnectionRecord] = []
        async for page in pages:
            async for entity in page:
                records.append(from_entity(entity))
            break
        return records, encode_token(getattr(pages, "continuation_token", None), app)

    async def update(self, record: ConnectionRecord, previous_name: str | None = None,
                     notify: Sequence[Notification] = ()) -> ConnectionRecord:
        """Replace the entity if it has not changed since ``record.etag`` was read; rename atomically; and queue
        ``notify`` in the same entity-group transaction (the outbox: a change is never without its notice)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import TableTransactionError, UpdateMode

        table = await self._table()
        guard: dict[str, Any] = {"etag": record.etag, "match_condition": MatchConditions.IfNotModified}
        queued: list[Any] = [("create", outbox_entity(record.app, item)) for item in notify]
        try:
            if previous_name is not None and previous_name.lower() != record.name.lower():
                results = await table.submit_transaction(
                    [
                        ("update", to_entity(record), {"mode": UpdateMode.REPLACE, **guard}),
                        ("delete", _name_entity(record.app, previous_name, record.id)),
                        ("create", _name_entity(record.app, record.name, record.id)),
                        *queued,
                    ]
                )
                etag = results[0].get("etag")
            elif queued:
                results = await table.submit_transaction(
                    [("update", to_entity(record), {"mode": UpdateMode.REPLACE, **guard}), *queued])
                etag = results[0].get("etag")
            else:
                metadata = await table.update_entity(to_entity(record), mode=UpdateMode.REPLACE, **guard)
                etag = metadata.get("etag")
        except TableTransactionError as error:
            if error.index == 2:
                raise NameTaken(f"A connection named '{record.name}' already exists for {record.app}.") from None
            raise self._changed(record) from None
        except (ResourceModifiedError, ResourceNotFoundError):
            raise self._changed(record) from None
        return record.evolve(etag=etag)

    async def delete(self, record: ConnectionRecord) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError

        table = await self._table()
        guard: dict[str, Any] = {"etag": record.etag, "match_condition": MatchConditions.IfNotModified}
        try:
            await table.submit_transaction(
                [
                    ("delete", to_entity(record), guard),
                    ("delete", _name_entity(record.app, record.name, record.id)),
                ]
            )
        except TableTransactionError:
            raise self._changed(record) from None

    # -- the outbox ---------------------------------------------------------------------------------------
    async def pending(self, apps: Sequence[str], limit: int = 100) -> list[Notification]:
        """The outbox's notifications, due or not (the caller keeps each connection's in order), oldest first: at
        most ``limit`` never tried and at most ``limit`` tried before, so that a backlog a failing receiver keeps
        refusing never keeps a new notice from being read (its alert record goes out when a pass first takes it)."""
        table = await self._table()
        found: list[Notification] = []
        for attempted in ("Attempts eq 0", "Attempts gt 0"):
            kind: list[Notification] = []
            for app in apps:  # each app's oldest (a partition reads in RowKey order: by time), then across apps
                taken = 0
                async for entity in table.query_entities(
                    f"PartitionKey eq @app and RowKey gt @low and RowKey lt @high and {attempted}",
                    parameters={"app": app, "low": OUTBOX_PREFIX, "high": OUTBOX_PREFIX + "~"},
                    results_per_page=limit,
                ):
                    kind.append(notification_of(entity))
                    taken += 1
                    if taken >= limit:
                        break
            found += sorted(kind, key=outbox_key)[:limit]
        return sorted(found, key=outbox_key)

    async def claim(self, item: Notification, until: datetime) -> Notification | None:
        """Take ``item`` (as read) for one delivery until ``until``: its row's next attempt moves there, under the
        ETag it was read with. None when another pass took it, delivered it or changed it first."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = await self._table()
        claimed = replace(item, next_attempt_at=until)
        try:
            metadata = await table.update_entity(outbox_entity(item.app, claimed), mode=UpdateMode.REPLACE,
                                                 etag=item.etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return replace(claimed, etag=(metadata or {}).get("etag"))

    async def delivered(self, item: Notification) -> None:
        table = await self._table()
        await table.delete_entity(item.app, outbox_key(item))

    async def retry_later(self, item: Notification) -> None:
        """Write the notice's next attempt over its row, under the ETag of this pass's claim (``item``'s), if the
        row is still there and still this pass's: a pass that delivered it meanwhile (two passes can hold one
        notice) deleted it, and it must not come back to be sent again; one that took it over once this pass's
        claim ran out handles it, and its claim stands."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = await self._table()
        guard: dict[str, Any] = {"etag": item.etag, "match_condition": MatchConditions.IfNotModified} \
            if item.etag else {}  # (a claim's answer always has one; without it, as before: the row as it is)
        with contextlib.suppress(ResourceNotFoundError, ResourceModifiedError):
            await table.update_entity(outbox_entity(item.app, item), mode=UpdateMode.REPLACE, **guard)

    @staticmethod
    def _changed(record: ConnectionRecord) -> ConcurrentChange:
        return ConcurrentChange(
            f"The connection '{record.id}' was changed by another request; read it again and retry.",
        )


async def delete_rows(table: TableClient, batch: list[tuple[str, dict[str, Any]]]) -> None:
    """Delete a batch of rows of one partition (at most 100: ``("delete", entity)`` operations), in one transaction.
    When some are gone already (another instance deleted them meanwhile), the transaction fails as a whole: they are
    then deleted one by one, a row already gone being done."""
    from azure.data.tables import TableTransactionError

    try:
        await table.submit_transaction(batch)
    except TableTransactionError as error:
        if getattr(error, "error_code", None) != "ResourceNotFound":
            raise
        for _, entity in batch:
            await table.delete_entity(entity["PartitionKey"], entity["RowKey"])  # absent: not an error
