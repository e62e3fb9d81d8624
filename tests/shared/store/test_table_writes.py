"""The lean single-entity writes (``shared.store.table_writes``, no SDK) store what the SDK stores.

An entity with a value of every supported type is inserted both ways into Azurite, under two keys, and read back
through the SDK: the same values of the same types. Then the insert's table creation, its conflict, the delete's
ETag conditions, the refusal of what cannot be stored, the SharedKey signature of a request with a body, and that
a cold write imports none of the SDKs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from localdev.azurite import Azurite
from shared.azure.clients import TABLES, AzureClients
from shared.errors import UpstreamError
from shared.settings import AZURITE_ACCOUNT, AZURITE_KEY
from shared.store.table_reads import EntityProperty, SharedKey, TableReads
from shared.store.table_writes import CONTENT_TYPE, EntityExists, TableWrites, entity_json
from tests.fresh import in_a_fresh_interpreter

SUFFIX = "Writes"


def every_type(partition_key: str, row_key: str) -> dict[str, Any]:
    """An entity with a value of each type the writes store (and a None, which is left out)."""
    return {
        "PartitionKey": partition_key, "RowKey": row_key,
        "Text": "it's ünïcødé ✓ \"quoted\"\nnew line", "Empty": "", "Yes": True, "No": False,
        "Small": 7, "Negative": -42, "Int32Max": 2**31 - 1, "Int32Min": -(2**31),
        "PastInt32": 2**31, "Big": 2**40 + 3, "BigNegative": -(2**40), "Int64Max": 2**63 - 1,
        "Ratio": 0.25, "Whole": 2.0, "Tiny": 1e-300, "Inf": math.inf, "MinusInf": -math.inf, "NaN": math.nan,
        "At": datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC),
        "Elsewhere": datetime(2026, 3, 4, 7, 6, 7, 5, tzinfo=timezone(timedelta(hours=2))),
        "Naive": datetime(2026, 3, 4, 5, 6, 7),
        "Id": uuid.UUID("0d6f0c1e-1111-4222-8333-444455556666"), "Bytes": b"\x00\x01\xfe\xff",
        "NoBytes": b"",
        "TypedInt64": EntityProperty(12, "Edm.Int64"), "TypedInt32": EntityProperty(5, "Edm.Int32"),
        "TypedString": EntityProperty("s", "Edm.String"), "TypedDouble": EntityProperty(3, "Edm.Double"),
        "TypedWhen": EntityProperty(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "Edm.DateTime"),
        "TypedGuid": EntityProperty(str(uuid.UUID(int=9)), "Edm.Guid"),
        "TypedBool": EntityProperty(True, "Edm.Boolean"),
        "TypedBytes": EntityProperty(b"\x07", "Edm.Binary"), "TypedNone": EntityProperty(None, "Edm.String"),
        "Nothing": None,
    }


def as_the_sdk_takes_it(entity: dict[str, Any]) -> dict[str, Any]:
    """The same entity for the SDK's ``create_entity``: where the writes take a plain value the SDK refuses or takes
    otherwise, the value the SDK needs to store the same thing. A plain int past Int32 is refused by the SDK (an
    ``Edm.Int64`` pair there); a naive datetime is taken by the SDK in the host's zone (UTC here and in Azure), by the
    writes as UTC whatever the host's zone."""
    same = {}
    for name, value in entity.items():
        if value.__class__ is int and not -(2**31) <= value < 2**31:
            value = (value, "Edm.Int64")
        elif isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        same[name] = value
    return same


def typed(entity: Any) -> dict[str, tuple[type, Any]]:
    """Each property's type and value, NaN made comparable, keys and metadata aside."""
    return {name: (type(value), "NaN" if isinstance(value, float) and math.isnan(value) else value)
            for name, value in entity.items() if name not in ("PartitionKey", "RowKey")}


async def test_an_entity_of_every_type_reads_back_as_the_sdks_own(clients: AzureClients) -> None:
    await TableWrites(clients).insert(SUFFIX, every_type("p", "lean"))
    table = await clients.table(SUFFIX)
    await table.create_entity(as_the_sdk_takes_it(every_type("p", "sdk")))

    lean, sdk = await table.get_entity("p", "lean"), await table.get_entity("p", "sdk")
    assert typed(lean) == typed(sdk)
    assert "Nothing" not in lean and "TypedNone" not in lean and len(lean) == len(every_type("p", "")) - 2
    assert lean["Big"] == (2**40 + 3, "Edm.Int64") and lean["Naive"] == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert lean["Elsewhere"] == datetime(2026, 3, 4, 5, 6, 7, 5, tzinfo=UTC) and lean["Bytes"] == b"\x00\x01\xfe\xff"
    # The lean reads too give the two entities alike.
    reads = TableReads(clients)
    assert typed(await reads.get_entity(SUFFIX, "p", "lean")) == typed(await reads.get_entity(SUFFIX, "p", "sdk"))


def test_the_json_is_the_sdks_but_for_string_annotations() -> None:
    """What is sent is the SDK's JSON for the same entity, less its ``Edm.String`` annotations (an unannotated
    string is an ``Edm.String``: the SDK's are redundant)."""
    from azure.data.tables._serialize import _add_entity_properties

    entity = every_type("p", "r")
    sdk = _add_entity_properties(as_the_sdk_takes_it(entity))
    strings = {key for key, value in sdk.items() if value == "Edm.String" and key != "TypedString@odata.type"}
    assert entity_json(entity) == {key: value for key, value in sdk.items() if key not in strings}
    assert json.loads(json.dumps(entity_json(entity))) == entity_json(entity)  # plain JSON, NaN as a string


async def test_an_insert_creates_its_table_when_it_does_not_exist(clients: AzureClients) -> None:
    reads, writes = TableReads(clients), TableWrites(clients)
    assert await reads.get_entity(SUFFIX, "p", "r") is None  # no table yet: a lean read creates none
    await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r", "N": 1})
    got = await reads.get_entity(SUFFIX, "p", "r")
    assert got is not None and got["N"] == 1

    # Inserts racing into another new table: one creates it, the others find it created (409), all insert.
    await asyncio.gather(*(writes.insert("Raced", {"PartitionKey": "p", "RowKey": str(n)}) for n in range(4)))
    assert [(await reads.get_entity("Raced", "p", str(n))) is not None for n in range(4)] == [True] * 4


async def test_a_table_deleted_after_its_first_use_is_a_failure_not_a_new_empty_table(clients: AzureClients) -> None:
    """Fail closed: an audit log deleted under a running service must refuse the next record, not start afresh."""
    writes = TableWrites(clients)
    await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r"})
    await clients.table_service().delete_table(clients.settings.table_prefix + SUFFIX)
    with pytest.raises(UpstreamError, match="404"):
        await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "s"})
    tables = [table.name async for table in clients.table_service().list_tables()]
    assert clients.settings.table_prefix + SUFFIX not in tables


async def test_a_merge_changes_only_what_it_is_given_and_never_creates(clients: AzureClients) -> None:
    reads, writes = TableReads(clients), TableWrites(clients)
    assert await writes.merge(SUFFIX, "p", "absent", {"N": 2}) is False  # no table yet
    await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r", "N": 1, "Name": "kept"})
    assert await writes.merge(SUFFIX, "p", "absent", {"N": 2}) is False
    assert await reads.get_entity(SUFFIX, "p", "absent") is None
    before = await reads.get_entity(SUFFIX, "p", "r")
    assert before is not None
    at = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert await writes.merge(SUFFIX, "p", "r", {"N": 2, "At": at}, etag=before.metadata["etag"]) is True
    after = await reads.get_entity(SUFFIX, "p", "r")
    assert after is not None and (after["N"], after["Name"], after["At"]) == (2, "kept", at)
    assert await writes.merge(SUFFIX, "p", "r", {"N": 3}, etag=before.metadata["etag"]) is False  # stale
    assert await writes.merge(SUFFIX, "p", "r", {"N": 4}) is True  # "*"
    final = await reads.get_entity(SUFFIX, "p", "r")
    assert final is not None and final["N"] == 4


async def test_a_single_use_entity_is_taken_once_and_a_page_of_expired_ones_deleted(clients: AzureClients) -> None:
    writes = TableWrites(clients)
    assert await writes.take(SUFFIX, "p", "r") is None  # no table yet
    await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r", "N": 1})
    taken = await writes.take(SUFFIX, "p", "r")
    assert taken is not None and taken["N"] == 1
    assert await writes.take(SUFFIX, "p", "r") is None
    for partition in ("a1", "a2", "a3", "b1"):
        await writes.insert(SUFFIX, {"PartitionKey": partition, "RowKey": "x"})
    assert await writes.delete_page(SUFFIX, "PartitionKey lt @cutoff", {"cutoff": "a3"}, top=5) == 2
    left = [e["PartitionKey"] for e in (await writes.query_page(SUFFIX, "PartitionKey ne ''", {}, top=10))[0]]
    assert left == ["a3", "b1"]


async def test_a_second_insert_of_the_same_keys_is_entity_exists(clients: AzureClients) -> None:
    writes = TableWrites(clients)
    await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r", "N": 1})
    with pytest.raises(EntityExists):
        await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r", "N": 2})
    got = await TableReads(clients).get_entity(SUFFIX, "p", "r")
    assert got is not None and got["N"] == 1


async def test_a_delete_is_conditional_on_the_etag(clients: AzureClients) -> None:
    reads, writes = TableReads(clients), TableWrites(clients)
    keys = ("o'brien ü", "it's %20 ünï (1)")  # quotes doubled, then everything percent-encoded, as the reads
    await writes.insert(SUFFIX, {"PartitionKey": keys[0], "RowKey": keys[1], "N": 1})
    stale = (await reads.get_entity(SUFFIX, *keys)).metadata["etag"]  # type: ignore[union-attr]
    table = await clients.table(SUFFIX)
    await table.upsert_entity({"PartitionKey": keys[0], "RowKey": keys[1], "N": 2})
    current = (await table.get_entity(*keys)).metadata["etag"]
    assert stale != current

    assert await writes.delete(SUFFIX, *keys, etag=stale) is False  # changed since: kept
    assert (await reads.get_entity(SUFFIX, *keys)) is not None
    assert await writes.delete(SUFFIX, *keys, etag=current) is True
    assert (await reads.get_entity(SUFFIX, *keys)) is None
    assert await writes.delete(SUFFIX, *keys, etag=current) is False  # absent
    assert await writes.delete(SUFFIX, *keys) is False  # absent, whatever its ETag

    await writes.insert(SUFFIX, {"PartitionKey": keys[0], "RowKey": keys[1]})
    assert await writes.delete(SUFFIX, *keys) is True  # "*": whatever its ETag
    assert await writes.delete("NoSuchTable", "p", "r") is False  # its table does not exist


@pytest.mark.parametrize("value", [
    [1], {"a": 1}, {1}, 1 + 2j, datetime(2026, 1, 1).date(), bytearray(b"x"), 2**63, -(2**63) - 1,
    EntityProperty(2**31, "Edm.Int32"), EntityProperty("x", "Edm.Int32"), EntityProperty(1, "Edm.Unknown"),
    EntityProperty(1, "Edm.Boolean"), (1, 2, 3), object(),
])
async def test_what_cannot_be_stored_is_a_type_error_before_anything_is_sent(
        clients: AzureClients, value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def sent(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request was sent")

    writes = TableWrites(clients)
    monkeypatch.setattr(clients.rest(TABLES), "send", sent)
    with pytest.raises(TypeError, match="'Value' cannot be stored") as raised:
        await writes.insert(SUFFIX, {"PartitionKey": "p", "RowKey": "r", "Value": value})
    assert repr(value) not in str(raised.value) and str(value) not in str(raised.value)  # a value is never told
    for keys in ({"RowKey": "r"}, {"PartitionKey": "p", "RowKey": 1}):
        with pytest.raises(TypeError, match="must be a string"):
            await writes.insert(SUFFIX, keys)


def test_the_shared_key_signature_of_a_request_with_a_body_is_the_sdks() -> None:
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.rest import HttpRequest
    from azure.data.tables._authentication import SharedKeyCredentialPolicy

    date = "Tue, 01 Dec 2026 00:10:50 GMT"
    policy = SharedKeyCredentialPolicy(AzureNamedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY), is_emulated=True)
    key = SharedKey(AZURITE_ACCOUNT, base64.b64decode(AZURITE_KEY))
    for method, path, body in [
        ("POST", "/devstoreaccount1/t1Writes", b'{"PartitionKey":"p","RowKey":"r"}'),
        ("POST", "/devstoreaccount1/Tables", b'{"TableName":"t1Writes"}'),
        ("DELETE", "/devstoreaccount1/t1Writes(PartitionKey='o%27%27brien',RowKey='r')", b""),
    ]:
        headers = {"x-ms-date": date, "x-ms-version": "2019-02-02", "Accept": "application/json",
                   "If-Match": "*", "Prefer": "return-no-content"}
        content_type = CONTENT_TYPE if body else ""
        if body:
            headers["Content-Type"] = content_type
        request = HttpRequest(method, f"http://127.0.0.1:10002{path}", headers=headers, content=body or None)
        policy.on_request(PipelineRequest(request, PipelineContext(None)))
        assert key.authorization(path, date, method=method, content_type=content_type) == \
            request.headers["Authorization"]


A_COLD_WRITE = """
import asyncio, json, sys

from shared.azure.clients import close_clients, get_clients
from shared.store.table_writes import TableWrites

async def main():
    writes = TableWrites(get_clients())
    await writes.insert("Cold", {"PartitionKey": "p", "RowKey": "r", "At": __import__("datetime").datetime.now()})
    deleted = await writes.delete("Cold", "p", "r")
    await close_clients()
    print(json.dumps({"deleted": deleted, "modules": sorted(sys.modules)}))

asyncio.run(main())
"""
NOT_ON_A_LEAN_WRITE = ["azure.identity", "msal", "azure.core", "aiohttp", "requests", "azure.data.tables"]


def test_a_cold_write_imports_none_of_the_sdks(azurite: Azurite) -> None:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AZURE_", "IDENTITY_", "MSI_", "AzureWebJobs", "STATE_"))}
    env.update({"AzureWebJobsStorage": azurite.connection_string, "STATE_TABLE_PREFIX": "c" + uuid.uuid4().hex[:10]})
    result = in_a_fresh_interpreter(A_COLD_WRITE, env=env)
    loaded = set(result["modules"])
    assert result["deleted"] is True and {"shared.azure.rest", "shared.store.table_writes"} <= loaded
    assert [name for name in NOT_ON_A_LEAN_WRITE if name in loaded or any(m.startswith(name + ".") for m in loaded)] \
        == []


async def test_a_fresh_entity_stored_though_answered_500_and_sent_again_is_stored_once(clients: AzureClients) -> None:
    """(Review O.) Table Storage stored a sign-in's state or a session but answered 500; the insert was sent again
    and met its own entity (409): EntityExists, which the sign-in and the console's login answered as a failure.
    An entity whose keys are random and new can only have met itself."""
    from tests.answer_dropper import APPLIED_THEN_500, answers_lost

    key = uuid.uuid4().hex
    async with answers_lost(lambda method, target, body: method == "POST" and key.encode() in body,
                            instead=APPLIED_THEN_500, settings=clients.settings) as (dropper, proxied):
        writes = TableWrites(proxied)
        await writes.insert(SUFFIX, {"PartitionKey": "fresh", "RowKey": "warm-up"})  # its table exists
        await writes.insert_fresh(SUFFIX, {"PartitionKey": "fresh", "RowKey": key, "N": 1})
        assert len(dropper.dropped) == 1
        got = await TableReads(proxied).get_entity(SUFFIX, "fresh", key)
        assert got is not None and got["N"] == 1


async def test_a_take_whose_mark_was_stored_though_answered_500_is_this_taker_s(clients: AzureClients) -> None:
    """(Review O.) The mark (a PATCH under the ETag) was stored but answered 500, sent again, and refused 412 by its
    own change: the taker gave up a state marked as its own, which nobody could take any more."""
    from tests.answer_dropper import APPLIED_THEN_500, answers_lost

    key = uuid.uuid4().hex
    async with answers_lost(lambda method, target, body: method == "PATCH" and key in target,
                            instead=APPLIED_THEN_500, settings=clients.settings) as (dropper, proxied):
        writes = TableWrites(proxied)
        await writes.insert(SUFFIX, {"PartitionKey": "taken", "RowKey": key, "N": 1})
        taken = await writes.take(SUFFIX, "taken", key)
        assert len(dropper.dropped) == 1
        assert taken is not None and taken["N"] == 1
        assert await writes.take(SUFFIX, "taken", key) is None
