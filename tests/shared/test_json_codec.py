"""The API's answers and Table Storage's pages go through orjson: the same JSON as the standard library's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.json_codec import DecodeError, dumps, iso, loads

# What an answer holds: strings of any script (control characters, quotes, emoji), integers, booleans, None,
# lists and string-keyed objects, nested.
_SCALARS = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)


def _standard(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_an_answer_is_the_bytes_the_standard_library_gives(data: Any) -> None:
    assert dumps(data) == _standard(data)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_a_document_reads_back_as_the_standard_library_reads_it(data: Any) -> None:
    document = json.dumps(data)  # escaped, as Table Storage sends non-ASCII
    assert loads(document.encode()) == json.loads(document) == data


@pytest.mark.parametrize("data", [{1: "a", None: "c", 2.5: "d"}, {True: "t", False: "f"}, {"big": 2**70},
                                  {"negative": -(2**70)}])
def test_what_orjson_refuses_or_keys_otherwise_is_written_as_the_standard_library_writes_it(data: Any) -> None:
    assert dumps(data) == _standard(data)


def test_a_lone_surrogate_fails_as_it_did_with_the_standard_library() -> None:
    with pytest.raises(UnicodeEncodeError):
        dumps({"name": "\ud800"})


@pytest.mark.parametrize("document", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1', b"\xff", b'{"a": "\\ud800"}'])
def test_what_is_not_json_is_a_value_error(document: bytes) -> None:
    with pytest.raises(ValueError):
        loads(document)
    assert issubclass(DecodeError, ValueError)


# Date-times of any year, with or without microseconds, in UTC, at a fixed offset, or naive (local time).
_ZONES = st.none() | st.just(UTC) | st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                                                       max_value=timedelta(hours=23, minutes=59)))
DATETIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES)


def _isoformat(value: datetime) -> str:
    """What the answers wrote before ``iso``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@settings(max_examples=500, deadline=None)
@given(DATETIMES | DATETIMES.map(lambda value: value.replace(microsecond=0)))
def test_a_date_time_is_written_as_isoformat_wrote_it_in_utc(value: datetime) -> None:
    assert iso(value) == _isoformat(value)


@pytest.mark.parametrize("value", [datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC), datetime(999, 1, 1, tzinfo=UTC),
                                   datetime(2026, 12, 1, 10, 0, 0, 1, tzinfo=timezone(timedelta(hours=1))),
                                   datetime(2026, 12, 1, 10), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
def test_the_edges_of_a_date_time_are_written_as_isoformat_wrote_them(value: datetime) -> None:
    assert iso(value) == _isoformat(value)
    assert iso(None) is None


def test_a_subclass_of_datetime_which_orjson_refuses_is_written_alike() -> None:
    class Instant(datetime):
        pass

    value = Instant(2026, 12, 1, 10, 0, 0, 5, tzinfo=UTC)
    assert iso(value) == _isoformat(value) == "2026-12-01T10:00:00.000005Z"
