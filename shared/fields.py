"""The rules of the request fields that are strings (a GUID, a connection's name, free text), without pydantic.

``shared.models`` builds its pydantic types from these, and a route that must stay lean on a cold instance (the
OAuth authorize route: ``shared.oauth_start``) checks its query with them directly, so both say the same. Each
rule returns the value it accepts (a GUID in lower case) or raises ``ValueError`` with the message a field
error carries; no message holds the value it was given.
"""

from __future__ import annotations

import re

from shared.errors import FieldError, InvalidRequest

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
NAME_RE = re.compile(r"^[a-z0-9-]{1,64}$")
HHMM_PATTERN = r"^([01][0-9]|2[0-3]):([0-5][0-9])$"  # a 24-hour time of day, ASCII digits (``\d`` takes any script's)
DESCRIPTION_MAX = 1024  # characters
DEFAULT_PAGE_SIZE = 100  # items of a page (connections, rotations, audit records) when no limit is asked for
MAX_PAGE_SIZE = 1000


def pointer_part(name: str | int) -> str:
    """One reference token of a JSON Pointer (RFC 6901): ``~`` as ``~0``, ``/`` as ``~1``."""
    return str(name).replace("~", "~0").replace("/", "~1")


def guid(value: str) -> str:
    if not GUID_RE.fullmatch(value):  # match's $ would also take a trailing newline
        raise ValueError("must be a GUID such as 00000000-0000-0000-0000-000000000000")
    return value.lower()


# Names the API's paths cannot read a connection by: ``GET .../azure-client-secrets/connection-name/clients`` is
# the route of the app registrations a connection sees (a connection "connection-name"), as the Functions host
# prefers a route's literal segments to ``{app}``.
RESERVED_NAMES = frozenset({"clients"})


def name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError("must be 1 to 64 lowercase letters, digits or hyphens (a slug)")
    if value in RESERVED_NAMES:
        raise ValueError(f"must not be {value!r}: .../connection-name/{value} is another route of the API")
    return value


# The bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): text that shows in another
# order than it is ("Trojan Source"), in the console, a log or an alert. Joiners and marks stay (emoji, scripts).
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def no_controls(value: str) -> str:
    if any(ord(ch) < 32 and ch not in "\r\n\t" for ch in value) or "\x7f" in value or _BIDI_CONTROLS.search(value):
        raise ValueError("must not contain control characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not Unicode text, it cannot be stored or sent on
            raise ValueError("must be Unicode text (no lone surrogate)") from None
    return value


def page_size(limit: int | None) -> int:
    """The size of a page asked for with ``limit`` (None: the default); a 400 out of 1 to ``MAX_PAGE_SIZE``."""
    size = DEFAULT_PAGE_SIZE if limit is None else limit
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest("The page size is out of range.",
                             errors=[FieldError("/limit", f"must be between 1 and {MAX_PAGE_SIZE}")])
    return size
