"""Continuation tokens: what a page hands out is read back, and anything else is a 400, never a read."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shared.errors import InvalidRequest
from shared.store.audit import _decode, _encode
from shared.store.tables import MAX_TOKEN, decode_token, encode_token


def _token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


KEY = "1!48!" + "QUJDREVGR0hJSktMTU5PUA" * 40  # Table Storage's own next keys are printable ASCII, up to 1 KiB


@pytest.mark.parametrize("token", [
    {"PartitionKey": "azure-key-vault", "RowKey": KEY[:1024]},
    {"PartitionKey": "azure-key-vault", "RowKey": None},  # Table Storage may send one of the two only
    {"PartitionKey": None, "RowKey": "6f1c1f4e-0000-4000-8000-000000000001"},
])
def test_a_token_a_page_handed_out_reads_back_as_it_was(token: dict[str, str | None]) -> None:
    raw = encode_token(token)
    assert raw is not None and len(raw) <= MAX_TOKEN
    assert decode_token(raw) == token


@pytest.mark.parametrize("raw", [
    base64.urlsafe_b64encode(b"[" * 1100).decode(),  # nested past the JSON parser's depth
    _token({"PartitionKey": "azure-key-vault", "RowKey": "\ud800"}),  # a lone surrogate cannot even be sent
    _token({"PartitionKey": "azure-key-vault", "RowKey": "a\u0000b"}),
    _token({"PartitionKey": "azure-key-vault", "RowKey": "é"}),
    _token({"PartitionKey": "azure-key-vault", "RowKey": "x" * 1025}),
    _token({"PartitionKey": "azure-key-vault", "Other": "x"}),
    _token({"PartitionKey": None, "RowKey": None}),
    _token({}),
    _token(["azure-key-vault", "x"]),
    _token({"PartitionKey": 1}),
    "x" * (MAX_TOKEN + 1),
    "not base64!",
    _token("just text"),
], ids=["nested", "surrogate", "control", "non-ascii", "too-long-key", "other-key", "both-null", "empty",
        "array", "number", "too-long", "not-base64", "string"])
def test_a_token_the_service_did_not_hand_out_is_a_400(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_token(raw)


START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)


def test_an_audit_search_s_token_reads_back_within_its_window() -> None:
    assert _decode(_encode("20261115", "20261115T000000|x"), START, END) == ("20261115", "20261115T000000|x")


@pytest.mark.parametrize("raw", [
    base64.urlsafe_b64encode(b"[" * 1100).decode(),
    _token(["20261115", "\ud800"]),
    _token(["20261115", "a\u0001"]),
    _token(["20261231", "x"]),  # a day outside the search's window
    _token(["20261399", "x"]),
    _token(["20261115"]),
    "x" * (MAX_TOKEN + 1),
], ids=["nested", "surrogate", "control", "outside", "no-date", "short", "too-long"])
def test_an_audit_search_s_forged_token_is_a_400(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        _decode(raw, START, END)
