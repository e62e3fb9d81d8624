"""Table Storage reads without the SDK: Get Entity and Query Entities over ``shared.azure.rest``.

A read request (one connection, a list page, a rotation history page) goes through here, so a cold instance
imports neither aiohttp, azure-core nor azure-data-tables for it, and a warm one spends its CPU on its own work
rather than on azure-core's pipeline and the Tables SDK's generic deserializer. Writes stay on the SDK
(``shared.store.tables``), but for single small entities (``shared.store.table_writes``, which shares the
endpoint, signing, paths and errors of :class:`TableRequests` here). This module only reads, and what it reads is
what the SDK would give:

- entities typed as azure-data-tables types them (:func:`entity_of`): strings, Int32 as ``int``, Int64 as an
  ``(int, "Edm.Int64")`` pair equal to the SDK's ``EntityProperty``, booleans, doubles, ``Edm.DateTime`` as an
  aware UTC ``datetime`` (fractions past microseconds cut, as the SDK does), ``Edm.Guid`` as ``UUID``,
  ``Edm.Binary`` as ``bytes``; ``metadata`` holds the ``etag`` and the ``timestamp``;
- a filter's ``@name`` parameters are substituted as the SDK does (:func:`odata_filter`);
- a query page's continuation is the SDK's ``by_page()`` token (``{"PartitionKey": ..., "RowKey": ...}``), so
  ``encode_token``/``decode_token`` of ``shared.store.tables`` give the same tokens either way.

Requests are signed with the connection string's account key (SharedKey, as the SDK signs them: Azurite
locally) or carry a bearer token of the service's identity for ``https://storage.azure.com/.default``. A table
not created yet reads as empty (nothing is created by a read); any answer but 200 or 404 is an
``UpstreamError``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote, urlsplit
from uuid import UUID

from shared.errors import NotFound, ServiceMisconfigured, UpstreamError, UpstreamThrottled, shown
from shared.json_codec import loads
from shared.records import ConnectionRecord, RotationEvent
from shared.store.history import HISTORY_TABLE, event_of
from shared.store.tables import (
    CONNECTIONS_TABLE,
    NAME_PREFIX,
    PART_OF,
    decode_token,
    encode_token,
    name_key,
    record_of_parts,
    record_parts,
    usable_key,
)

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients
    from shared.azure.rest import Response

log = logging.getLogger(__name__)

API_VERSION = "2019-02-02"  # the SDK's
ACCEPT = "application/json;odata=minimalmetadata"
TAKEN_BY = "TakenBy"  # the mark of a single-use entity's taker (``TableWrites.take``): it is used
# What reading an entity's JSON into a record raises when it is not one the service wrote (a column missing or of
# another type, a key of another form): Table Storage's answer cannot be read, a 502, never a 500.
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError)
NEXT_PARTITION_KEY = "x-ms-continuation-nextpartitionkey"
NEXT_ROW_KEY = "x-ms-continuation-nextrowkey"
_Read = TypeVar("_Read")


class EntityProperty(NamedTuple):
    """A typed value the SDK does not map to a plain Python type (an ``Edm.Int64``); equal to the SDK's own
    ``EntityProperty`` of the same value and type."""

    value: Any
    edm_type: str


class Entity(dict[str, Any]):
    """An entity's properties, with ``metadata`` (``etag``, ``timestamp``) as the SDK's ``TableEntity`` has."""

    metadata: dict[str, Any]


# -- typing what the service stores, as the SDK does -------------------------------------------------------------
def _datetime(value: str) -> datetime:
    """``Edm.DateTime`` as the SDK reads it: UTC, the fraction cut to microseconds."""
    if 22 <= len(value) <= 28 and value[19] == "." and value[-1] == "Z":  # the service's form: 1 to 7 digits
        text = value  # fromisoformat reads the "Z" as UTC and cuts the fraction to microseconds
    else:
        head, dot, fraction = value.partition(".")
        if dot:
            fraction = fraction.replace("Z", "")[:6]
            text = f"{head}.{fraction}" if fraction else head
        else:
            text = head.removesuffix("Z")
        if "+" in text or text.endswith("Z") or text.count("-") != 2:  # the SDK too accepts nothing but "Z"
            raise UpstreamError("Table Storage returned a date-time that cannot be read.")
        text += "+00:00"
    try:
        return _from_iso(text)
    except ValueError:
        raise UpstreamError("Table Storage returned a date-time that cannot be read.") from None


_from_iso = datetime.fromisoformat


def _int64(value: Any) -> EntityProperty:
    return EntityProperty(int(value), "Edm.Int64")


_CONVERT: dict[str, Any] = {
    "Edm.DateTime": _datetime,
    "Edm.Int64": _int64,
    "Edm.Guid": UUID,
    "Edm.Binary": lambda value: base64.b64decode(value.encode("utf-8") if isinstance(value, str) else value),
    "Edm.Double": float,
}


_AS_IS = frozenset({"Edm.String", "Edm.Int32"})
_INT32_MIN, _INT32_MAX = -(2**31), 2**31


def entity_of(item: Mapping[str, Any]) -> Entity:
    """One entity of an answer's JSON (minimal metadata), typed as azure-data-tables types it."""
    entity = Entity(item)
    timestamp = entity.pop("Timestamp", None)
    odata: dict[str, Any] = {}
    # A property's name is an identifier (no "."): the keys with a dot are the metadata and the type annotations.
    for key in [key for key in entity if "." in key]:
        if key.startswith("odata."):
            odata[key[6:]] = entity.pop(key)
            continue
        if not key.endswith("@odata.type"):
            continue
        annotation = entity.pop(key)
        name = key[:-11]
        if name in entity and annotation not in _AS_IS:
            convert = _CONVERT.get(annotation)
            # A type without a conversion (the service annotates none: Edm.Boolean is implied) is held as the SDK
            # holds it, type first.
            entity[name] = EntityProperty(annotation, entity[name]) if convert is None else convert(entity[name])
    for name in [name for name, value in entity.items()  # a large untyped integer is an Int64 to the SDK
                 if value.__class__ is int and not _INT32_MIN <= value < _INT32_MAX]:
        entity[name] = EntityProperty(entity[name], "Edm.Int64")
    etag = odata.pop("etag", None)
    odata.pop("metadata", None)
    if timestamp:
        if not etag:
            etag = "W/\"datetime'" + quote(timestamp) + "'\""
        timestamp = _datetime(timestamp)
    odata.update({"etag": etag, "timestamp": timestamp})
    entity.metadata = odata
    return entity


# Where each key of a connection entity's JSON goes: a column's value to its part of the record (part, field), a
# column's type annotation to its column (a string: the column is typed once the whole item is read).
_TARGET_OF: dict[str, tuple[int, str] | str] = {
    **PART_OF, **{column + "@odata.type": column for column in PART_OF}}


def connection_record_of(item: Mapping[str, Any]) -> ConnectionRecord:
    """The record of one connection entity of an answer's JSON: ``from_entity(entity_of(item))``, typing only the
    columns the record is read from (the same conversions), in one pass over the item."""
    parts = record_parts(item["PartitionKey"], item["RowKey"])
    annotated: list[tuple[str, Any]] = []
    target_of = _TARGET_OF.get
    for key, value in item.items():
        target = target_of(key)
        if target is None:
            continue
        if target.__class__ is str:
            annotated.append((target, value))
            continue
        if value.__class__ is int and not _INT32_MIN <= value < _INT32_MAX:
            value = EntityProperty(value, "Edm.Int64")  # a large untyped integer is an Int64 to the SDK
        parts[target[0]][target[1]] = value  # type: ignore[index]
    for column, annotation in annotated:  # a typed column is typed from its JSON value
        if column in item and annotation not in _AS_IS:
            convert = _CONVERT.get(annotation)
            part, field = PART_OF[column]
            parts[part][field] = EntityProperty(annotation, item[column]) if convert is None else convert(item[column])
    etag = item.get("odata.etag")
    if not etag:
        timestamp = item.get("Timestamp")
        etag = "W/\"datetime'" + quote(timestamp) + "'\"" if timestamp else None
    return record_of_parts(parts, etag)


def odata_filter(template: str, parameters: Mapping[str, str | bool | int]) -> str:
    """``template`` with each ``@name`` word replaced by its parameter, quoted as azure-data-tables quotes it:
    a string in single quotes with each quote doubled, ``true``/``false``, an integer (``L`` past 32 bits)."""
    if not parameters:  # as the SDK: a filter without parameters goes as written (its literals may hold an '@')
        return template
    words = template.split(" ")
    for index, word in enumerate(words):
        if word.startswith("@"):
            value = parameters[word[1:]]
            if isinstance(value, bool):
                words[index] = str(value).lower()
            elif isinstance(value, int):
                words[index] = str(value) if value.bit_length() <= 32 else f"{value}L"
            else:
                words[index] = "'" + value.replace("'", "''") + "'"
    return " ".join(words)


# -- authorization -------------------------------------------------------------------------------------------------
class SharedKey(NamedTuple):
    account: str
    key: bytes

    def authorization(self, path: str, date: str, query: Mapping[str, str] | None = None, *, method: str = "GET",
                      content_type: str = "") -> str:
        """SharedKey as the SDK signs a request: the verb, an empty Content-MD5, the ``Content-Type`` (empty
        without a body), ``x-ms-date``, then ``/{account}{path}`` (the path as sent) and ``?comp=`` when the query
        has one."""
        comp = (query or {}).get("comp")
        to_sign = (f"{method}\n\n{content_type}\n{date}\n/{self.account}{path}"
                   + (f"?comp={comp}" if comp is not None else ""))
        mac = _keyed(self.key).copy()  # the key's HMAC state, set up once (OpenSSL 3 looks SHA-256 up per new HMAC)
        mac.update(to_sign.encode("utf-8"))
        digest = mac.digest()
        return f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"


@functools.lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with ``key`` and fed nothing: each signature copies it."""
    return hmac.new(key, digestmod="sha256")


class Endpoint(NamedTuple):
    url: str  # the table service, without a trailing slash
    path: str  # its path part (Azurite's has the account name)
    shared_key: SharedKey | None  # None: a bearer token of the service's identity


@functools.lru_cache(maxsize=4)
def parse_connection_string(connection_string: str) -> Endpoint:
    """The table endpoint and account key of a storage connection string."""
    values: dict[str, str] = {}
    for part in connection_string.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            values[name.strip().lower()] = value.strip()
    account, key = values.get("accountname"), values.get("accountkey")
    if not account or not key:
        raise ServiceMisconfigured("The storage connection string has no AccountName or AccountKey.")
    url = values.get("tableendpoint") or (
        f"{values.get('defaultendpointsprotocol') or 'https'}://{account}.table."
        f"{values.get('endpointsuffix') or 'core.windows.net'}")
    url = url.rstrip("/")
    try:
        secret = base64.b64decode(key, validate=True)
    except ValueError:
        raise ServiceMisconfigured("The storage connection string's AccountKey is not base64.") from None
    return Endpoint(url, urlsplit(url).path, SharedKey(account, secret))


_DATE: tuple[int, str] = (-1, "")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date() -> str:
    """``x-ms-date`` (RFC 1123), formatted once per second."""
    global _DATE
    now = int(time.time())
    if _DATE[0] != now:
        t = time.gmtime(now)  # not email.utils.formatdate: its import costs more than a cold read should
        _DATE = (now, f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
                      f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")
    return _DATE[1]


def _quote(value: str) -> str:
    return quote(value, safe="")


# -- requests to the state tables, shared by the reads and the writes (shared.store.table_writes) ------------------
class TableRequests:
    """Signed requests to the service's state tables (``{prefix}{suffix}``) over the lean client: the endpoint and
    authorization of the settings (a connection string's account key, or the service's identity), the paths of a
    table and of an entity, and the errors."""

    def __init__(self, clients: AzureClients) -> None:
        from shared.azure.clients import TABLES

        self._clients = clients
        self._rest = clients.rest(TABLES)
        storage = clients.settings.storage
        if storage.connection_string:
            self._endpoint = parse_connection_string(storage.connection_string)
        else:
            if not storage.table_service_uri:
                raise ServiceMisconfigured("Table Storage is not configured.")
            url = storage.table_service_uri.rstrip("/")
            self._endpoint = Endpoint(url, urlsplit(url).path, None)
        self._prefix = clients.settings.table_prefix

    async def _headers(self, path: str, method: str = "GET", content_type: str = "") -> dict[str, str]:
        date = _http_date()
        headers = {"x-ms-version": API_VERSION, "DataServiceVersion": "3.0", "Accept": ACCEPT, "x-ms-date": date}
        if content_type:
            headers["Content-Type"] = content_type
        key = self._endpoint.shared_key
        if key is not None:
            headers["Authorization"] = key.authorization(path, date, method=method, content_type=content_type)
        else:
            headers["Authorization"] = "Bearer " + await self._clients.storage_token()
        return headers

    async def _get(self, path: str, query: str = "") -> Response:
        return await self._request("GET", path, query)

    async def _request(self, method: str, path: str, query: str = "", *, body: bytes = b"", content_type: str = "",
                       extra: Mapping[str, str] | None = None) -> Response:
        """``method`` on ``path`` (the path as sent: the endpoint's, then the table's), signed; a request that got
        no usable answer is an ``UpstreamError`` (its message names no key, body or secret)."""
        from shared.azure.rest import RestError

        url = self._endpoint.url + path[len(self._endpoint.path):] + (("?" + query) if query else "")
        headers = await self._headers(path, method, content_type)
        if extra:
            headers.update(extra)
        try:
            return await self._rest.send(method, url, headers, body)
        except RestError as error:
            done = "read" if method == "GET" else "written"
            # The error's text names the account's host, the table and the entity's keys: the log's, not the caller's.
            log.warning("Table Storage could not be %s: %s", done, error)
            if error.status in (429, 503):  # still throttling or unavailable when the retries ran out
                raise UpstreamThrottled(f"Table Storage is busy and could not be {done}; try again later.",
                                        retry_after=error.retry_after) from None
            raise UpstreamError(f"Table Storage could not be {done}.") from None

    @staticmethod
    def _failed(response: Response) -> UpstreamError:
        code = error_code(response)
        return UpstreamError(f"Table Storage answered {response.status}" + (f" ({code[:100]})." if code else "."))

    def _table_path(self, suffix: str) -> str:
        return f"{self._endpoint.path}/{_quote(self._prefix + suffix)}"

    def _entity_path(self, suffix: str, partition_key: str, row_key: str) -> str:
        """The entity's path, each key's quotes doubled (OData) and then percent-encoded, as the SDK's."""
        return (f"{self._table_path(suffix)}(PartitionKey='{_quote(partition_key.replace(chr(39), chr(39) * 2))}',"
                f"RowKey='{_quote(row_key.replace(chr(39), chr(39) * 2))}')")


def error_code(response: Response) -> str:
    """The service's error code of a failed answer (``odata.error.code`` of its body, else ``x-ms-error-code``), or
    an empty string."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(response.body)["odata.error"]["code"])
    return response.headers.get("x-ms-error-code", "")


# -- the reads -----------------------------------------------------------------------------------------------------
class TableReads(TableRequests):
    """Get Entity and Query Entities on the service's state tables (``{prefix}{suffix}``)."""

    async def get_entity(self, suffix: str, partition_key: str, row_key: str) -> Entity | None:
        """The entity, or None when it (or its table) does not exist."""
        return await self.read_entity(suffix, partition_key, row_key, entity_of)

    async def read_entity(self, suffix: str, partition_key: str, row_key: str,
                          of: Callable[[Mapping[str, Any]], _Read]) -> _Read | None:
        """What ``of`` reads from the entity's JSON, or None when the entity (or its table) does not exist."""
        response = await self._get(self._entity_path(suffix, partition_key, row_key))
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._failed(response)
        try:
            return of(loads(response.body))
        except UNREADABLE:
            raise UpstreamError("Table Storage returned an entity that cannot be read.") from None

    async def query_page(
        self, suffix: str, query_filter: str, parameters: Mapping[str, str | bool | int], *, top: int,
        select: Sequence[str] | None = None, continuation: Mapping[str, Any] | None = None,
    ) -> tuple[list[Entity], dict[str, Any] | None]:
        """One page of at most ``top`` entities and the SDK's continuation token for the next (None: the last).
        A table that does not exist has no entities."""
        return await self.read_page(suffix, query_filter, parameters, entity_of, top=top, select=select,
                                    continuation=continuation)

    async def read_page(
        self, suffix: str, query_filter: str, parameters: Mapping[str, str | bool | int],
        of: Callable[[Mapping[str, Any]], _Read], *, top: int, select: Sequence[str] | None = None,
        continuation: Mapping[str, Any] | None = None,
    ) -> tuple[list[_Read], dict[str, Any] | None]:
        """:meth:`query_page`, each entity read from its JSON by ``of``."""
        params = [f"$filter={_quote(odata_filter(query_filter, parameters))}", f"$top={int(top)}"]
        if select:
            params.append(f"$select={_quote(','.join(select))}")
        if continuation:
            if continuation.get("PartitionKey") is not None:
                params.append(f"NextPartitionKey={_quote(str(continuation['PartitionKey']))}")
            if continuation.get("RowKey") is not None:
                params.append(f"NextRowKey={_quote(str(continuation['RowKey']))}")
        response = await self._get(f"{self._table_path(suffix)}()", "&".join(params))
        if response.status == 404:
            return [], None
        if response.status != 200:
            raise self._failed(response)
        try:
            read = [of(item) for item in loads(response.body)["value"]]
        except UNREADABLE:
            raise UpstreamError("Table Storage returned a page that cannot be read.") from None
        next_pk, next_rk = response.headers.get(NEXT_PARTITION_KEY), response.headers.get(NEXT_ROW_KEY)
        token = {"PartitionKey": next_pk, "RowKey": next_rk} if next_pk or next_rk else None
        return read, token


# -- the read adapters of connections and their rotation history ----------------------------------------------------
class ConnectionReads:
    """The reads of ``shared.store.tables.ConnectionsTable`` (same records, errors and tokens), without the SDK."""

    def __init__(self, reads: TableReads) -> None:
        self._reads = reads

    async def get(self, app: str, connection_id: str) -> ConnectionRecord:
        if connection_id.startswith(NAME_PREFIX[0]) or not usable_key(connection_id):
            raise NotFound(f"No {app} connection has the id '{shown(connection_id)}'.")
        record = await self._reads.read_entity(CONNECTIONS_TABLE, app, connection_id, connection_record_of)
        if record is None:
            raise NotFound(f"No {app} connection has the id '{shown(connection_id)}'.")
        return record

    async def get_by_name(self, app: str, name: str) -> ConnectionRecord:
        key = name_key(name)
        if key is None:
            raise NotFound(f"No {app} connection is named '{shown(name)}'.")
        index = await self._reads.get_entity(CONNECTIONS_TABLE, app, NAME_PREFIX + key)
        if index is None:
            raise NotFound(f"No {app} connection is named '{shown(name)}'.")
        return await self.get(app, str(index["ConnectionId"]))

    async def list_page(self, app: str, limit: int,
                        continuation: str | None) -> tuple[list[ConnectionRecord], str | None]:
        records, token = await self._reads.read_page(
            CONNECTIONS_TABLE, "PartitionKey eq @app and RowKey lt @names", {"app": app, "names": NAME_PREFIX[0]},
            connection_record_of, top=limit, continuation=decode_token(continuation, app))
        return records, encode_token(token, app)


class HistoryReads:
    """The page read of ``shared.store.history.RotationHistory``, without the SDK."""

    def __init__(self, reads: TableReads) -> None:
        self._reads = reads

    async def page(self, connection_id: str, limit: int,
                   continuation: str | None) -> tuple[list[RotationEvent], str | None]:
        events, token = await self._reads.read_page(  # an entry that cannot be read: Table Storage's failure
            HISTORY_TABLE, "PartitionKey eq @c", {"c": connection_id},
            lambda item: event_of(connection_id, entity_of(item)), top=limit,
            continuation=decode_token(continuation, connection_id))
        return events, encode_token(token, connection_id)
