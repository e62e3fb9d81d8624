"""Continuation tokens: what a page hands out is read back, and anything else is a 400, never a read. A
connection's columns: what is written is read back."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shared.errors import FieldError, InvalidRequest, NotFound
from shared.records import ConnectionRecord, RotationState
from shared.store.audit import _decode, _encode
from shared.store.tables import (
    MAX_TOKEN,
    ConnectionsTable,
    decode_token,
    encode_token,
    name_key,
    record_of_columns,
    to_entity,
)


def _token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


ON_THE_TOKEN = FieldError("/continuationToken", "is not a token this list handed out")
def _listed(value: dict[str, object]) -> str:
    return _token({"list": "azure-key-vault", **value})


KEY = "1!48!" + "QUJDREVGR0hJSktMTU5PUA" * 40  # Table Storage's own next keys are printable ASCII, up to 1 KiB


@pytest.mark.parametrize("token", [
    {"PartitionKey": "azure-key-vault", "RowKey": KEY[:1024]},
    {"PartitionKey": "azure-key-vault", "RowKey": None},  # Table Storage may send one of the two only
    {"PartitionKey": None, "RowKey": "6f1c1f4e-0000-4000-8000-000000000001"},
])
def test_a_token_a_page_handed_out_reads_back_as_it_was(token: dict[str, str | None]) -> None:
    raw = encode_token(token, "azure-key-vault")
    assert raw is not None and len(raw) <= MAX_TOKEN
    assert decode_token(raw, "azure-key-vault") == token


@pytest.mark.parametrize("raw", [
    base64.urlsafe_b64encode(b"[" * 1100).decode(),  # nested past the JSON parser's depth
    _listed({"PartitionKey": "azure-key-vault", "RowKey": "\ud800"}),  # a lone surrogate cannot even be sent
    _listed({"PartitionKey": "azure-key-vault", "RowKey": "a\u0000b"}),
    _listed({"PartitionKey": "azure-key-vault", "RowKey": "é"}),
    _listed({"PartitionKey": "azure-key-vault", "RowKey": "x" * 1025}),
    _listed({"PartitionKey": "azure-key-vault", "Other": "x"}),
    _listed({"PartitionKey": None, "RowKey": None}),
    _listed({}),
    _token(["azure-key-vault", "x"]),
    _listed({"PartitionKey": 1}),
    _token({"PartitionKey": "azure-app-configuration", "RowKey": "x"}),  # of no list, and of another partition
    _token({"PartitionKey": None, "RowKey": "x"}),  # of no list, and of no partition it tells
    "x" * (MAX_TOKEN + 1),
    "not base64!",
    _token("just text"),
], ids=["nested", "surrogate", "control", "non-ascii", "too-long-key", "other-key", "both-null", "empty",
        "array", "number", "no-list", "no-list-nor-partition", "too-long", "not-base64", "string"])
def test_a_token_the_service_did_not_hand_out_is_a_400(raw: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_token(raw, "azure-key-vault")
    assert refused.value.errors == (ON_THE_TOKEN,)  # (Review FB 11.) the field error names the query parameter


@pytest.mark.parametrize("partition", ["azure-app-configuration", "6f1c1f4e-0000-4000-8000-000000000001"])
def test_a_token_another_list_handed_out_is_a_400(partition: str) -> None:
    """(Review FB 12.) A token of another app's list, or of a connection's rotations, was read on in this list's
    query and answered an empty last page, as if the list had ended."""
    raw = encode_token({"PartitionKey": KEY[:40], "RowKey": KEY[:40]}, partition)
    assert decode_token(raw, partition) is not None
    with pytest.raises(InvalidRequest) as refused:
        decode_token(raw, "azure-key-vault")
    assert refused.value.errors == (ON_THE_TOKEN,)


@pytest.mark.parametrize("partition", ["azure-key-vault", "6f1c1f4e00004000800000000000000a"])
@pytest.mark.parametrize("row", ["0a1b2c3d", None])
def test_a_token_an_older_version_handed_out_reads_on_in_its_own_list_only(partition: str, row: str | None) -> None:
    """(Upgrade review.) Tokens named no list before b64275f: one a page handed out then, still held by a client
    paging through the upgrade, was a 400. It reads on where its next PartitionKey is the list's own (every list
    reads one partition), and is still a 400 in any other list."""
    older = _token({"PartitionKey": partition, "RowKey": row})  # as those versions encoded Table Storage's keys
    assert decode_token(older, partition) == {"PartitionKey": partition, "RowKey": row}
    with pytest.raises(InvalidRequest) as refused:
        decode_token(older, "azure-app-configuration")
    assert refused.value.errors == (ON_THE_TOKEN,)


START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)


def test_an_audit_search_s_token_reads_back_within_its_window() -> None:
    token = _encode("20261115", "20261115T000000|x", "s1")
    assert _decode(token, START, END, "s1") == ("20261115", "20261115T000000|x")


def test_a_token_an_older_version_handed_out_reads_on_within_its_window() -> None:
    """(Review of the upgrade.) Before tokens named their search, they held the day and the last RowKey: a client
    paging across a deploy sends one to the new version, which reads on (its window still checked)."""
    older = _token(["20261115", "20261115T000000|x"])
    assert _decode(older, START, END, "s1") == ("20261115", "20261115T000000|x")
    with pytest.raises(InvalidRequest):
        _decode(_token(["20261231", "20261231T000000|x"]), START, END, "s1")


@pytest.mark.parametrize("raw", [
    base64.urlsafe_b64encode(b"[" * 1100).decode(),
    _token(["20261115", "\ud800", "s1"]),
    _token(["20261115", "a\u0001", "s1"]),
    _token(["20261231", "x", "s1"]),  # a day outside the search's window
    _token(["20261399", "x", "s1"]),
    _token(["20261115", "x", "s2"]),  # of another search (other filters): it would skip this one's records
    _token(["20261115"]),
    "x" * (MAX_TOKEN + 1),
], ids=["nested", "surrogate", "control", "outside", "no-date", "another-search", "short", "too-long"])
def test_an_audit_search_s_forged_token_is_a_400(raw: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _decode(raw, START, END, "s1")
    assert refused.value.errors == (ON_THE_TOKEN,)


class _Untouched:
    """Clients or reads that no lookup may reach."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"read {name}: a value that is no name was looked up")


async def test_an_id_with_a_lone_surrogate_finds_nothing_and_reads_nothing() -> None:
    """(Fuzzing review.) The SDK's read of a connection by id raised on a lone surrogate (it cannot be sent): a 500
    on the clients route, where any other id that names nothing is a 404."""
    from shared.store.table_reads import ConnectionReads

    for store in (ConnectionsTable(_Untouched()), ConnectionReads(_Untouched())):  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await store.get("azure-client-secrets", "a\ud800")


@pytest.mark.parametrize("asked", ["PROD-1", "prod-1", "Prod-1"])
def test_a_name_is_looked_up_in_any_case(asked: str) -> None:
    assert name_key(asked) == "prod-1"


@pytest.mark.parametrize("asked", ["\u212aey", "pro\u0130d", "\ufb00", "pr\u00f6d", "", "x/y"])
async def test_a_value_that_is_no_name_finds_nothing_and_reads_nothing(asked: str) -> None:
    """(Review FB 13.) Unicode lowercases the Kelvin sign (U+212A) into ``k``: ``\u212aey`` found the connection named
    ``key``, though it is not its name in any case."""
    from shared.store.table_reads import ConnectionReads

    assert name_key(asked) is None
    for store in (ConnectionsTable(_Untouched()), ConnectionReads(_Untouched())):  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await store.get_by_name("azure-key-vault", asked)


def test_the_journals_of_a_last_removal_are_stored_in_columns_of_their_own_and_read_back() -> None:
    """A DELETE's last removal and a clean-up's (``retire_*``), each with the time Entra ID first refused its
    credential since it was sent: each field in its column (``Rot`` + its name), read back as written."""
    at = datetime(2026, 1, 5, 12, 0, 0, 123000, tzinfo=UTC)
    record = ConnectionRecord(
        app="azure-key-vault", id="c1", name="c1", method="client-secret", tenant_id="t1", client_id="a2",
        created_at=at, updated_at=at, secret_name="s1", secret_version="v2",
        rotation=RotationState(removing_key_id="k2", removing_refused_at=at, retire_version="v1",
                               retire_tenant_id="t1", retire_client_id="a1", retire_removing_key_id="k1",
                               retire_removing_refused_at=at.replace(minute=3)))
    entity = to_entity(record)
    assert (entity["RotRemovingRefusedAt"], entity["RotRetireRemovingRefusedAt"]) == (at, at.replace(minute=3))
    assert record_of_columns(entity, "W/1") == record


def test_a_connection_written_before_key_made_existed_reads_it_as_unknown_and_keeps_it_so() -> None:
    """(Upgrade review.) An entity without ``RotKeyMade`` (rotated before 7aca1c1) read it as False: the secret a
    rotation had put in use was taken for the user's. It reads as None, which ``made_in_use`` reads as ``managed``,
    as those versions did, and is written back without the column; one written since reads as written."""
    at = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    record = ConnectionRecord(
        app="azure-key-vault", id="c1", name="c1", method="client-secret", tenant_id="t1", client_id="a1",
        created_at=at, updated_at=at, secret_name="s1", secret_version="v2",
        rotation=RotationState(enabled=True, key_id="k2", managed=True, key_made=True))
    older = to_entity(record)
    del older["RotKeyMade"]
    read = record_of_columns(older, "W/1")
    assert read.rotation.key_made is None and read.rotation.made_in_use
    assert not record_of_columns(older | {"RotManaged": False}, "W/1").rotation.made_in_use
    assert "RotKeyMade" not in to_entity(read) and record_of_columns(to_entity(read), "W/1") == read
    for made in (True, False):
        written = to_entity(record.evolve(rotation=record.rotation.evolve(key_made=made)))
        assert record_of_columns(written, "W/1").rotation.key_made is made
