"""The API's answers and Table Storage's pages go through orjson: the same JSON as the standard library's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.json_codec import DecodeError, dumps, loads

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
