"""Single-entity Table Storage writes without the SDK: Insert, Merge and Delete Entity over ``shared.azure.rest``.

A route that writes only a small entity (an audit record, an OAuth state, a console session) must stay lean on a
cold instance: through the SDK its one write would import aiohttp, azure-core and azure-data-tables (a quarter of
a second and more) for a request of a few hundred bytes. So these writes are made here, on the endpoint, signing
and errors of the lean reads (:class:`TableWrites` is a ``shared.store.table_reads.TableReads``), with the one
retry schedule of ``shared.azure.rest`` and its method rules: an insert is a POST, retried after 429, 500, 503
and 504 but never sent again once its connection dropped (it may have been applied), so a dropped insert is an
``UpstreamError``; a delete is idempotent and retried like a read. Two uses of the stores are made once here: a
single-use entity taken (read, then deleted under its ETag) and a page of expired entities deleted.

An entity is serialised as azure-data-tables serialises it (:func:`entity_json`), so that what is stored, and
read back by the SDK or by ``shared.store.table_reads``, is the same either way: ``bool``, an ``int`` of the
Int32 range and ``str`` plain (the SDK also annotates a string ``Edm.String``, which is what an unannotated
string is); an ``int`` past the Int32 range as an ``Edm.Int64`` string (the SDK refuses a plain one: an
``EntityProperty(n, "Edm.Int64")`` there; the reads give such a value back as that pair); ``float`` as
``Edm.Double`` (``NaN``, ``Infinity``, ``-Infinity`` as strings); ``datetime`` as ``Edm.DateTime`` in UTC with
six fraction digits, a naive one taken as UTC (the SDK takes it in the host's zone, UTC in Azure Functions);
``uuid.UUID`` as ``Edm.Guid``; ``bytes`` as base64 ``Edm.Binary``; an ``(value, edm_type)`` pair
(``table_reads.EntityProperty``, or the SDK's) converted to its type and always annotated; ``None`` left out.
Any other value is a ``TypeError``, raised before anything is sent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from shared.errors import UpstreamError
from shared.store.table_reads import TAKEN_BY, Entity, TableReads, error_code

if TYPE_CHECKING:
    from shared.azure.rest import Response

# What the SDK sends: the body's type, and no entity echoed back.
CONTENT_TYPE = "application/json;odata=nometadata"
_NO_CONTENT = {"Prefer": "return-no-content"}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31
_INT64_MIN, _INT64_MAX = -(2**63), 2**63


class EntityExists(Exception):
    """An insert found an entity of the same PartitionKey and RowKey (409 ``EntityAlreadyExists``)."""


class _Unstorable(TypeError):
    """Why a value cannot be stored (its message names no value)."""


# -- serialising an entity as the SDK does -----------------------------------------------------------------------
def _datetime(value: Any) -> tuple[str | None, Any]:
    if isinstance(value, str):  # already the service's form (as the SDK lets it through)
        return "Edm.DateTime", value
    if not isinstance(value, datetime):
        raise _Unstorable("not a datetime")
    service = getattr(value, "tables_service_value", None)  # an SDK-read value: its exact 7-digit form
    if service:
        return "Edm.DateTime", service
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return "Edm.DateTime", (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
                            f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z")


def _double(value: Any) -> tuple[str | None, Any]:
    if isinstance(value, str):
        return "Edm.Double", value
    if value.__class__ not in (float, int):
        raise _Unstorable("not a number")
    if math.isnan(value):
        return "Edm.Double", "NaN"
    if math.isinf(value):
        return "Edm.Double", "Infinity" if value > 0 else "-Infinity"
    return "Edm.Double", value


def _int64(value: Any) -> tuple[str | None, Any]:
    if not _INT64_MIN <= int(value) < _INT64_MAX:
        raise _Unstorable("outside the Edm.Int64 range")
    return "Edm.Int64", str(value)


def _int(value: int) -> tuple[str | None, Any]:
    return (None, value) if _INT32_MIN <= value < _INT32_MAX else _int64(value)


def _int32(value: Any) -> tuple[str | None, Any]:
    number = int(value)
    if not _INT32_MIN <= number < _INT32_MAX:
        raise _Unstorable("outside the Edm.Int32 range")
    return "Edm.Int32", number


def _binary(value: Any) -> tuple[str | None, Any]:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if value.__class__ is not bytes:
        raise _Unstorable("not bytes")
    return "Edm.Binary", base64.b64encode(value).decode("ascii")


def _boolean(value: Any) -> tuple[str | None, Any]:
    if value.__class__ is not bool:
        raise _Unstorable("not a bool")
    return "Edm.Boolean", value


# A value by its exact class, as the SDK looks it up (a subclass of str or int is not one of these).
_PLAIN: dict[type, Callable[[Any], tuple[str | None, Any]]] = {
    str: lambda value: (None, value),
    bool: lambda value: (None, value),
    int: _int,
    float: _double,
    UUID: lambda value: ("Edm.Guid", str(value)),
    bytes: _binary,
}

# An ``(value, edm_type)`` pair, by its type: always annotated, as the SDK does.
_TYPED: dict[str, Callable[[Any], tuple[str | None, Any]]] = {
    "Edm.Binary": _binary,
    "Edm.Boolean": _boolean,
    "Edm.DateTime": _datetime,
    "Edm.Double": _double,
    "Edm.Guid": lambda value: ("Edm.Guid", str(value)),
    "Edm.Int32": _int32,
    "Edm.Int64": _int64,
    "Edm.String": lambda value: ("Edm.String", str(value)),
}


def _property(value: Any) -> tuple[str | None, Any]:
    """The ``@odata.type`` annotation (None: none) and the JSON value of one property's value."""
    convert = _PLAIN.get(value.__class__)
    if convert is not None:
        return convert(value)
    if isinstance(value, datetime):
        return _datetime(value)
    if isinstance(value, tuple) and len(value) == 2:
        convert = _TYPED.get(value[1])
        if convert is not None:
            return convert(value[0])
    raise _Unstorable("not a type Table Storage stores")


def entity_json(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of ``entity`` as azure-data-tables sends it (see the module's docstring). A value that
    cannot be stored is a ``TypeError`` naming its property and type, never the value."""
    for key in ("PartitionKey", "RowKey"):
        if entity.get(key).__class__ is not str:
            raise TypeError(f"An entity's {key} must be a string.")
    properties: dict[str, Any] = {}
    for name, value in entity.items():
        if value is None or (isinstance(value, tuple) and len(value) == 2 and value[0] is None):
            continue
        try:
            annotation, properties[name] = _property(value)
        except (TypeError, ValueError, OverflowError) as error:
            why = error if isinstance(error, _Unstorable) else "not valid"
            kind = type(value).__name__
            raise TypeError(f"The property {name!r} cannot be stored: its {kind} value is {why}.") from None
        if annotation is not None:
            properties[name + "@odata.type"] = annotation
    return properties


def _body(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")


# -- the writes ----------------------------------------------------------------------------------------------------
class TableWrites(TableReads):
    """Insert, Merge and Delete Entity on the service's state tables (``{prefix}{suffix}``), beside the reads."""

    async def insert(self, suffix: str, entity: Mapping[str, Any]) -> None:
        """Insert ``entity`` (its keys are its ``PartitionKey`` and ``RowKey``); the table is created if it does not
        exist yet, on its first use in this process only (as ``AzureClients.table`` creates the SDK's): a table
        that vanishes later, such as an audit log deleted under a running service, is an ``UpstreamError``, so an
        audited change is refused rather than recorded in a new, empty log. An entity of the same keys is
        :class:`EntityExists`; another failure an ``UpstreamError``.

        An insert answered 429, 500, 503 or 504 is retried, as azure-core retries it; after a 500 or 504 the retry
        may find the entity its first attempt stored: that is :class:`EntityExists` too, as through the SDK."""
        body = _body(entity_json(entity))
        name = self._prefix + suffix
        in_use = self._clients.tables_in_use
        response = await self._insert(suffix, body)
        if response.status == 404 and error_code(response) == "TableNotFound" and name not in in_use:
            await self._create_table(name)
            response = await self._insert(suffix, body)
        if response.status in (201, 204):
            in_use.add(name)
            return
        if response.status == 409 and error_code(response) == "EntityAlreadyExists":
            raise EntityExists("An entity with the same PartitionKey and RowKey already exists.")
        raise self._failed(response)

    async def insert_fresh(self, suffix: str, entity: Mapping[str, Any]) -> None:
        """:meth:`insert` of an entity whose keys are random and new (a sign-in's state, a session: 128 bits or
        more): one of the same keys can only be this write's own first attempt, stored though answered 500 or 504
        and sent again, so :class:`EntityExists` means it is done."""
        with contextlib.suppress(EntityExists):
            await self.insert(suffix, entity)

    async def _insert(self, suffix: str, body: bytes) -> Response:
        return await self._request("POST", self._table_path(suffix), body=body, content_type=CONTENT_TYPE,
                                   extra=_NO_CONTENT)

    async def _create_table(self, name: str) -> None:
        """Create Table; one that exists already (another instance was first) is as good."""
        response = await self._request("POST", f"{self._endpoint.path}/Tables", body=_body({"TableName": name}),
                                       content_type=CONTENT_TYPE, extra=_NO_CONTENT)
        if response.status in (201, 204) or (response.status == 409
                                             and error_code(response) == "TableAlreadyExists"):
            return
        raise self._failed(response)

    async def merge(self, suffix: str, partition_key: str, row_key: str, properties: Mapping[str, Any],
                    etag: str = "*") -> bool:
        """Merge ``properties`` into the entity if it still has ``etag`` (``"*"``: whatever it has, but it must
        exist: a merge never creates one). True when merged; False when it (or its table) does not exist or its
        ETag changed; another failure is an ``UpstreamError``. A PATCH with ``If-Match``: retried after 429, 500,
        503 and 504, never sent again once its connection dropped (applied, its retry would fail its ETag)."""
        body = _body(entity_json({**properties, "PartitionKey": partition_key, "RowKey": row_key}))
        response = await self._request("PATCH", self._entity_path(suffix, partition_key, row_key), body=body,
                                       content_type=CONTENT_TYPE, extra={"If-Match": etag})
        if 200 <= response.status < 300:
            return True
        if response.status in (404, 412):
            return False
        raise self._failed(response)

    async def delete(self, suffix: str, partition_key: str, row_key: str, etag: str = "*") -> bool:
        """Delete the entity if it still has ``etag`` (``"*"``: whatever it has). True when it was deleted; False
        when it (or its table) does not exist or its ETag changed; another failure is an ``UpstreamError``.

        A delete is retried when its connection drops, as azure-core retries one: one that was applied before the
        drop is then answered 404, and reads as False (as if deleted by someone else)."""
        response = await self._request("DELETE", self._entity_path(suffix, partition_key, row_key),
                                       extra={"If-Match": etag})
        if 200 <= response.status < 300:
            return True
        if response.status in (404, 412):
            return False
        raise self._failed(response)

    async def take(self, suffix: str, partition_key: str, row_key: str) -> Entity | None:
        """A single-use entity (a pending sign-in): read, then marked taken by this caller under its ETag (``TakenBy``,
        a value of its own), so that of two takers one wins, then deleted. None when it does not exist, or another
        took it first. The mark, not the deletion, decides: a merge whose answer was lost (a PATCH with ``If-Match``
        is not sent again) is read back, and is this caller's when the mark is its own; a deletion sent again after
        its connection dropped is answered 404 whoever applied it, and could not tell. The deletion is best effort
        (an entity left marked is taken by nobody, and its hour's purge deletes it)."""
        import secrets

        entity = await self.get_entity(suffix, partition_key, row_key)
        if entity is None or entity.get(TAKEN_BY):
            return None
        mark = secrets.token_hex(16)
        try:
            won = await self.merge(suffix, partition_key, row_key, {TAKEN_BY: mark}, etag=entity.metadata["etag"])
        except UpstreamError:
            again = await self.get_entity(suffix, partition_key, row_key)
            if again is not None and not again.get(TAKEN_BY):
                raise  # not applied: the failure as it was (the entity is still there to take)
            won = again is not None and again.get(TAKEN_BY) == mark
        if not won:  # another's mark, or its own: a merge applied whose answer (a 5xx) made it send it again, 412
            again = await self.get_entity(suffix, partition_key, row_key)
            if again is None or again.get(TAKEN_BY) != mark:
                return None
        with contextlib.suppress(UpstreamError):  # marked taken: nobody takes it again
            await self.delete(suffix, partition_key, row_key)
        return entity

    async def delete_page(self, suffix: str, query_filter: str, parameters: Mapping[str, str], *, top: int,
                          max_pages: int = 100) -> int:
        """Delete the entities of the first page of ``query_filter`` that has any (at most ``top``, their keys
        alone read); how many were found. Table Storage may answer a page with none and a continuation (after 5 s
        of scanning, or at a partition range's end): the next is read, up to ``max_pages``, so that 0 means none
        are left (the purges stop on it)."""
        continuation: dict[str, object] | None = None
        for _ in range(max_pages):
            found, continuation = await self.query_page(suffix, query_filter, parameters, top=top,
                                                        select=["PartitionKey", "RowKey"], continuation=continuation)
            for entity in found:
                await self.delete(suffix, entity["PartitionKey"], entity["RowKey"])
            if found or continuation is None:
                return len(found)
        return 0
