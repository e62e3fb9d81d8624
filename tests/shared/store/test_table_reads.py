"""The lean reads (``shared.store.table_reads``, no SDK) give what the SDK store gives, field by field.

Connections of many shapes are written through the SDK store (``ConnectionsTable``) into Azurite, then read
both ways, page by page, and compared: records (dataclass equality and ETags), their public JSON, and the
continuation tokens. The entity typing, the filter quoting and the SharedKey signature are also compared with
the SDK's own on the same input.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.azure.clients import AzureClients
from shared.errors import NotFound, UpstreamError
from shared.records import Actor, Authorization, ConnectionRecord, HealthState, RotationEvent, RotationState
from shared.settings import AZURITE_ACCOUNT, AZURITE_KEY, load_settings
from shared.store import table_reads
from shared.store.history import RotationHistory
from shared.store.table_reads import (
    ConnectionReads,
    HistoryReads,
    SharedKey,
    TableReads,
    connection_record_of,
    entity_of,
    odata_filter,
    parse_connection_string,
)
from shared.store.tables import ConnectionsTable, from_entity
from shared.views import to_response

APP = "azure-key-vault"
T0 = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)


# -- the same typing, quoting and signature as the SDK, on the same input ----------------------------------------
def test_entities_are_typed_as_the_sdk_types_them() -> None:
    from azure.data.tables._deserialize import _convert_to_entity

    guid = uuid.uuid4()
    item = {
        "odata.etag": "W/\"datetime'2026-03-04T05%3A06%3A07.8912345Z'\"", "PartitionKey": "p", "RowKey": "r",
        "Timestamp": "2026-03-04T05:06:07.8912345Z", "Text": "it's ünïcode", "Small": 7, "Flag": True,
        "Ratio": 0.25, "Big@odata.type": "Edm.Int64", "Big": "9007199254740993", "Huge": 2**40,
        "When@odata.type": "Edm.DateTime", "When": "2026-03-04T05:06:07.1234567Z",
        "Whole@odata.type": "Edm.DateTime", "Whole": "2026-03-04T05:06:07Z",
        "Short@odata.type": "Edm.DateTime", "Short": "2026-03-04T05:06:07.5Z",
        "Id@odata.type": "Edm.Guid", "Id": str(guid),
        "Bytes@odata.type": "Edm.Binary", "Bytes": base64.b64encode(b"\x00\x01\xff").decode(),
        "Double@odata.type": "Edm.Double", "Double": "1.5",
    }
    sdk = _convert_to_entity(dict(item))
    lean = entity_of(item)
    assert dict(lean) == dict(sdk)
    assert {name: type(value) for name, value in lean.items() if name not in ("Big", "Huge")} == {
        name: type(value) for name, value in sdk.items() if name not in ("Big", "Huge")} | {
        "When": datetime, "Whole": datetime, "Short": datetime}
    assert lean["Big"] == sdk["Big"] == (9007199254740993, "Edm.Int64")
    assert lean["When"].tzinfo is not None and lean["When"] == datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    assert lean.metadata == sdk.metadata


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)), st.integers(1, 7),
       st.integers(0, 9))
def test_a_date_time_of_the_services_form_is_read_as_the_sdk_reads_it(when: datetime, digits: int,
                                                                        seventh: int) -> None:
    """The service writes 1 to 7 fraction digits and a "Z" (fromisoformat reads them as they are)."""
    from azure.data.tables._deserialize import _convert_to_entity

    value = f"{when.isoformat(timespec='seconds')}.{f'{when.microsecond:06d}{seventh}'[:digits]}Z"
    item = {"PartitionKey": "p", "RowKey": "r", "When@odata.type": "Edm.DateTime", "When": value}
    read = entity_of(item)["When"]
    assert read == _convert_to_entity(dict(item))["When"] and read.tzinfo is UTC


def test_a_connection_entity_is_read_into_its_record_as_from_its_typed_entity() -> None:
    """``connection_record_of`` types only the columns a record is read from, in one step: the record (and ETag)
    is the one ``from_entity`` makes of the entity ``entity_of`` types, whatever the typing of those columns."""
    when = "2026-03-04T05:06:07.1234567Z"
    base = {"odata.etag": "W/\"datetime'2026-03-04T05%3A06%3A07.1234567Z'\"", "PartitionKey": APP,
            "RowKey": "0" * 32, "Timestamp": when, "Kind": "connection", "Name": "n", "Method": "client-secret",
            "TenantId": "t", "ClientId": "c", "CreatedAt@odata.type": "Edm.DateTime", "CreatedAt": when,
            "UpdatedAt@odata.type": "Edm.DateTime", "UpdatedAt": "2026-03-04T05:06:07Z", "SecretName": "s",
            "SecretVersion": "v", "Version": 3, "RotEnabled": True, "RotFailures": 0,
            "HlthCheckedAt@odata.type": "Edm.DateTime", "HlthCheckedAt": "2026-03-04T05:06:07.5Z",
            "CreatedById": "u", "CreatedByName": "Zoë", "CreatedByType": "user", "AuthorizedByOid": "o"}
    variants = [
        base,
        {key: value for key, value in base.items() if key != "odata.etag"},  # the ETag made from the Timestamp
        {**base, "Version@odata.type": "Edm.Int64", "Version": "9007199254740993"},  # an Int64 column
        {**base, "RotFailures": 2**40, "Unread@odata.type": "Edm.DateTime", "Unread": "junk"},  # a large untyped int
        {**base, "RotAttempt@odata.type": "Edm.Double", "RotAttempt": 2**40,  # a typed large integer
         "RotFailures@odata.type": "Edm.Int32", "RotFailures": 2**35, "RotStep@odata.type": "Edm.Boolean",
         "RotStep": True},
        {**base, "UpdatedById@odata.type": "Edm.Guid", "UpdatedById": "0D6F0C1E-1111-4222-8333-444455556666"},
        {**base, "RotLeaseUntil@odata.type": "Edm.DateTime", "RotLeaseUntil": "2026-03-04T05:06:07.9999999Z",
         "AuthorizedByUpn": "a@b.example", "AuthorizedByTenantId": "tt", "Description": "d\n✓"},
    ]
    for item in variants:
        expected = from_entity(entity_of({key: value for key, value in item.items() if key != "Unread"}))
        record = connection_record_of(item)
        assert record == expected and record.etag == expected.etag and repr(record) == repr(expected)
        assert to_response(record) == to_response(expected)
    with pytest.raises(UpstreamError):  # a malformed date-time of a column the record reads
        connection_record_of({**base, "CreatedAt": "2026-03-04 05:06:07+02:00"})


def test_a_filter_is_quoted_as_the_sdk_quotes_it() -> None:
    from azure.data.tables._serialize import _parameter_filter_substitution

    template = "PartitionKey eq @app and RowKey lt @names and Flag eq @flag and N gt @n and M gt @m"
    parameters: dict[str, Any] = {"app": "o'brien's app", "names": "~", "flag": True, "n": 5, "m": 2**40}
    assert odata_filter(template, parameters) == _parameter_filter_substitution(parameters, template)


def test_the_shared_key_signature_is_the_sdks() -> None:
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest
    from azure.data.tables._authentication import SharedKeyCredentialPolicy

    path = "/devstoreaccount1/Connections(PartitionKey='azure-key-vault',RowKey='o%27%27brien%20%C3%BC')"
    date = "Tue, 01 Dec 2026 00:10:50 GMT"
    request = HttpRequest("GET", f"http://127.0.0.1:10002{path}?$top=5",
                          headers={"x-ms-date": date, "x-ms-version": "2019-02-02", "Accept": "application/json"})
    policy = SharedKeyCredentialPolicy(AzureNamedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY), is_emulated=True)
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    key = SharedKey(AZURITE_ACCOUNT, base64.b64decode(AZURITE_KEY))
    assert key.authorization(path, date) == request.headers["Authorization"]
    assert key.authorization(path, date) == request.headers["Authorization"]  # each signature from a fresh state


@pytest.mark.parametrize("instant", [0, 951782400, 1735689599, 1800000000 + 86400 * 200])
def test_the_date_header_is_rfc_1123_as_the_sdk_writes_it(instant: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from email.utils import formatdate

    monkeypatch.setattr(table_reads, "_DATE", (-1, ""))
    monkeypatch.setattr(table_reads.time, "time", lambda: instant + 0.75)
    assert table_reads._http_date() == formatdate(instant, usegmt=True)


def test_the_connection_string_gives_the_endpoint_and_key() -> None:
    endpoint = parse_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"TableEndpoint=http://127.0.0.1:1234/{AZURITE_ACCOUNT};")
    assert endpoint.url == f"http://127.0.0.1:1234/{AZURITE_ACCOUNT}" and endpoint.path == f"/{AZURITE_ACCOUNT}"
    assert endpoint.shared_key == SharedKey(AZURITE_ACCOUNT, base64.b64decode(AZURITE_KEY))
    cloud = parse_connection_string(f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={AZURITE_KEY};"
                                    "EndpointSuffix=core.usgovcloudapi.net")
    assert cloud.url == "https://acct.table.core.usgovcloudapi.net" and cloud.path == ""


# -- against Azurite: the SDK store writes, both read -----------------------------------------------------------
def shapes() -> list[ConnectionRecord]:
    """Connections of every shape the store holds."""
    actor = Actor("0d6f0c1e-1111-4222-8333-444455556666", "Zoë O'Neil \"admin\"", "user")
    app_actor = Actor("app-id", "ci pipeline", "app")
    records = []
    for n in range(23):
        at = T0 + timedelta(minutes=n, microseconds=n)
        record = ConnectionRecord(
            app=APP, id=uuid.UUID(int=n + 1).hex, name=f"conn-{n:02d}", method="client-secret",
            tenant_id=str(uuid.UUID(int=1000 + n)), client_id=str(uuid.UUID(int=2000 + n)), created_at=at,
            updated_at=at + timedelta(seconds=1), secret_name=f"conn-{n}", secret_version=f"v{n}",
            created_by=actor, updated_by=app_actor if n % 2 else actor)
        if n % 3 == 0:
            record = record.evolve(description='Quotes \' and " and ünïcødé ✓ and a\nnew line', version=n + 2)
        if n % 4 == 1:
            record = record.evolve(
                status="error", status_message="AADSTS7000215: Invalid client secret provided.",
                last_validated_at=at + timedelta(hours=1),
                rotation=RotationState(
                    enabled=True, interval_days=30, rotate_at="03:00", time_zone="Europe/Paris",
                    status="succeeded", message="rotated", last_rotated_at=at, last_attempt_at=at,
                    next_at=at + timedelta(days=30), schedule_key=f"sk{n}", failures=2, key_id=str(uuid.UUID(int=n)),
                    managed=True, rotation_id="rot-1", step="create", trigger="manual", started_at=at, attempt=3,
                    attempt_started_at=at, pending_key_id="pending"),
                health=HealthState(status="healthy", checked_at=at, message="ok",
                                   credential_expires_at=at + timedelta(days=90), next_check_at=at,
                                   check_key="ck", notified_status="expiring", notified_at=at,
                                   unchecked_since=at + timedelta(minutes=5)))
        if n % 5 == 2:
            record = record.evolve(method="oauth", authorized_by=Authorization(
                "oid-" + str(n), "user@contoso.example", str(uuid.UUID(int=3000 + n))))
        if n % 5 == 3:
            record = record.evolve(method="certificate", health=HealthState(status="expired"))
        if n % 7 == 4:
            record = record.evolve(name=f"o'brien's connection {n}", authorized_by=Authorization("oid", None, None))
        records.append(record)
    return records


async def test_the_lean_reads_give_what_the_sdk_store_gives(clients: AzureClients) -> None:
    sdk = ConnectionsTable(clients)
    for record in shapes():
        stored = await sdk.insert(record)
        if record.rotation.enabled:  # an updated entity too, with its new ETag
            await sdk.update(stored.evolve(version=stored.version + 1))
    lean = ConnectionReads(TableReads(clients))

    for size in (1, 7, 50):
        token: str | None = None
        pages = 0
        while True:
            expected, expected_token = await sdk.list_page(APP, size, token)
            got, got_token = await lean.list_page(APP, size, token)
            assert got == expected
            assert [r.etag for r in got] == [r.etag for r in expected] and all(r.etag for r in got)
            assert json.dumps([to_response(r) for r in got]) == json.dumps([to_response(r) for r in expected])
            assert got_token == expected_token
            pages += 1
            token = got_token
            if token is None:
                break
        assert pages >= -(-23 // size)

    for record in shapes():
        by_id = await lean.get(APP, record.id.upper().lower())
        assert by_id == await sdk.get(APP, record.id) and by_id.etag == (await sdk.get(APP, record.id)).etag
        assert to_response(by_id) == to_response(await sdk.get(APP, record.id))
        by_name = await lean.get_by_name(APP, record.name.upper())
        assert by_name == await sdk.get_by_name(APP, record.name.upper())


async def test_unknown_ids_names_and_a_missing_table_read_as_not_found(clients: AzureClients) -> None:
    lean = ConnectionReads(TableReads(clients))
    # Nothing was written under this prefix: the table does not exist, and a read does not create it.
    assert await lean.list_page(APP, 50, None) == ([], None)
    with pytest.raises(NotFound):
        await lean.get(APP, uuid.uuid4().hex)
    with pytest.raises(NotFound):
        await lean.get_by_name(APP, "it's not there")
    from azure.data.tables.aio import TableServiceClient

    assert clients.settings.storage.connection_string is not None
    async with TableServiceClient.from_connection_string(clients.settings.storage.connection_string) as service:
        names = [table.name async for table in service.list_tables()]
    assert not [name for name in names if name.startswith(clients.settings.table_prefix)]

    await ConnectionsTable(clients).insert(shapes()[0])
    with pytest.raises(NotFound):
        await lean.get(APP, uuid.uuid4().hex)
    for unusable in ("a/b", "~name~x", "bad#id", "x" * 600):
        with pytest.raises(NotFound):
            await lean.get(APP, unusable)


async def test_the_rotation_history_pages_are_the_sdks(clients: AzureClients) -> None:
    history = RotationHistory(clients)
    connection = uuid.uuid4().hex
    for n in range(9):
        await history.record(RotationEvent(
            rotation_id=f"rot-{n}", attempt=1 + n % 2, connection_id=connection, app=APP,
            started_at=T0 + timedelta(hours=n), finished_at=None if n == 8 else T0 + timedelta(hours=n, seconds=9),
            outcome="running" if n == 8 else "failed", trigger="schedule", new_key_id="new" if n % 2 else None,
            revoked_key_id=None, message="Graph said 'no'" if n % 3 else None))
    lean = HistoryReads(TableReads(clients))
    for size in (1, 4, 50):
        token: str | None = None
        while True:
            expected, expected_token = await history.page(connection, size, token)
            got, got_token = await lean.page(connection, size, token)
            assert got == expected and got_token == expected_token
            assert [e.as_dict() for e in got] == [e.as_dict() for e in expected]
            token = got_token
            if token is None:
                break
    assert await lean.page(uuid.uuid4().hex, 5, None) == ([], None)


async def test_with_an_identity_a_read_carries_its_bearer_token_reused_until_near_expiry() -> None:
    """No connection string: the service's identity signs in for Table Storage (its credential is handed in here
    as the running service gets it from ``AzureClients.service_credential``)."""
    import asyncio
    import time

    from azure.core.credentials import AccessToken

    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    class Credential:
        def __init__(self) -> None:
            self.scopes: list[str] = []

        async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.scopes.extend(scopes)
            return AccessToken(f"token-{len(self.scopes)}", int(time.time()) + (3600 if len(self.scopes) > 1 else 200))

        async def close(self) -> None:
            pass

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    built = AzureClients(load_settings({"AzureWebJobsStorage__tableServiceUri": f"http://127.0.0.1:{port}"}))
    credential = Credential()
    built._service_credential = credential  # type: ignore[assignment]
    lean = ConnectionReads(TableReads(built))
    try:
        for _ in range(3):
            with pytest.raises(NotFound):
                await lean.get(APP, "0123")
    finally:
        await built.close()
        server.close()
    # The first token expires within the refresh margin, so it is replaced once; the second is reused.
    assert credential.scopes == ["https://storage.azure.com/.default"] * 2
    assert [b"Authorization: Bearer token-1" in s for s in seen] == [True, False, False]
    assert all(b"Authorization: Bearer token-2" in s for s in seen[1:])
    assert seen[0].startswith(b"GET /AppConnConnections(PartitionKey='azure-key-vault',RowKey='0123') HTTP/1.1")


async def _answering(status_line: bytes, *headers: bytes) -> Any:
    """A loopback Table endpoint that answers every request with ``status_line`` and ``headers``, no body."""
    import asyncio

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"\r\n".join([status_line, *headers, b"Content-Length: 0", b"", b""]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _failed_read(*answer: bytes) -> UpstreamError:
    """What a read of one entity raises when Table Storage (on a loopback port) gives ``answer`` every time."""
    from tests.loopback_table import connection_string, port_of

    server = await _answering(*answer)
    built = AzureClients(load_settings({"AzureWebJobsStorage": connection_string(port_of(server))}))
    try:
        with pytest.raises(UpstreamError) as caught:
            await TableReads(built).get_entity("Connections", "tenant-secret-partition", "row-key-7")
    finally:
        await built.close()
        server.close()
    return caught.value


@pytest.mark.parametrize(("header", "wait"), [(b"Retry-After: 120", "120"), (b"x-ms-retry-after-ms: 45000", "45")])
async def test_a_read_still_throttled_when_the_retries_run_out_is_a_503_with_the_storage_wait(
        header: bytes, wait: str, caplog: pytest.LogCaptureFixture) -> None:
    """(Review FC 1 and 2.) Table Storage still answering 503 past the retry budget: a 503 problem whose
    ``Retry-After`` is the service's wait (not a 502 without one), and whose detail names neither the account's
    host, nor the table, nor the entity's keys (the log has them)."""
    caught = await _failed_read(b"HTTP/1.1 503 Server Busy", header)
    problem = caught.to_problem()
    assert (caught.status, caught.headers.get("Retry-After")) == (503, wait), problem
    assert problem["type"].endswith("upstream-throttled")
    for named in ("127.0.0.1", "Connections", "tenant-secret-partition", "row-key-7"):
        assert named not in caught.detail
    assert any("row-key-7" in record.getMessage() for record in caplog.records)


async def test_a_read_without_a_usable_answer_is_a_502_that_names_nothing_of_the_storage() -> None:
    """(Review FC 2.) A malformed answer (not retried): a 502 that says Table Storage could not be read, without
    the request's URL (the account's host, the table, the entity's keys)."""
    caught = await _failed_read(b"HTTP/1.1 xyz not a status")
    assert caught.status == 502 and "Retry-After" not in caught.headers
    assert caught.detail == "Table Storage could not be read.", caught.detail
