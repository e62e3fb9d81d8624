"""Secret hygiene for logs: every log record is redacted as it is created, SDK records included.

Two nets:

* patterns: ``Bearer <token>``; JWTs (``eyJ...``, with the rest of one wrapped onto the next line);
  ``client_secret=...``/``refresh_token=...``/``AccountKey=...``/``SharedAccessKey=...`` and the like in forms, URLs
  and connection strings, and ``client_secret: ...`` (YAML) or a header (``X-IDENTITY-HEADER: ...``,
  ``api-key: ...``, ``x-functions-key: ...``); ``clientSecret='...'`` in reprs; ``"clientSecret": "..."``/
  ``"secretText": "..."`` in JSON or reprs, JSON escaped once or more included; the JSON members ``"sig"``,
  ``"code"`` (an authorization code, not an error code) and a JWK's private ones (``"d"``, ``"p"``, ``"q"``,
  ``"dp"``, ``"dq"``, ``"qi"``, ``"k"``); ``code=``, ``state=`` and ``sig=`` in a query or a form (function keys,
  authorization codes, SAS signatures; after ``?``, ``&``, ``&amp;``, ``\u0026``, ``SharedAccessSignature=``, or
  URL-encoded); SharedKey signatures; the console's cookies; the password of a URL's userinfo
  (``scheme://user:[REDACTED]@host``); PEM private keys, whole, cut short or only their tail before the END line.
  Every pattern is linear in its text: no nested quantifiers, and an unbounded one only after a fixed marker (a
  key, a header, ``eyJ``, ``://``) or from the start of a run it cannot be re-entered from;
* exact values registered at runtime with :func:`register_secret` wherever the service handles secret material:
  Key Vault reads and writes (``stored=True``), the service's own and the OAuth clients' secrets and the host's
  ``IDENTITY_HEADER``/``MSI_SECRET`` from the environment, and any other (by default: a request's, such as the
  credentials a caller submits before they are checked). Each kind is kept apart, so that however many of the last
  are registered (bogus credentials included), they never push out the others (``MAX_REGISTERED``,
  ``MAX_REGISTERED_CHARACTERS``, ``MAX_STORED_CHARACTERS``).

:func:`install` wraps the log record factory once per process (``function_app.py`` calls it), so the filter sees
every record whichever logger or handler it goes to. A record is rewritten only when something was redacted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from shared.scoped import scoped

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
MAX_REGISTERED = 4096  # values registered at request time (register_secret's default): the most recent kept
MAX_REGISTERED_CHARACTERS = 8 * 1024 * 1024  # ... and at most this many characters of them
MAX_STORED_CHARACTERS = 16 * 1024 * 1024  # material from Key Vault (stored=True): ~2,500 RSA 4096 keys, both forms

# Names of secret fields, matched case-insensitively (client_?secret is also clientSecret, CLIENT_SECRET).
_KEYS = (
    r"client_?secret|secret_?text|refresh_?token|access_?token|id_?token|client_?assertion|code_?verifier|password"
    r"|private_?key|x-functions-key|x-identity-header|api-key|AccountKey|SharedAccessKey"
)
# A quote, bare or escaped once or more (JSON in JSON, or printed as a repr: \", \\", \\\").
_QUOTE = r"""\\{0,7}["']"""
# (pattern, replacement, a text the pattern's every match holds: a text without it is not searched, "" for any).
_PATTERNS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    # PEM private keys, whole or cut short.
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S),
     "[REDACTED PRIVATE KEY]", "-----BEGIN "),
    # The tail of one without its BEGIN line (a PEM split across records): the base64 lines before its END line.
    (re.compile(r"(?<![A-Za-z0-9+/=\\\r\n])[A-Za-z0-9+/=\\\r\n]+-----END [A-Z0-9 ]*PRIVATE KEY-----"),
     "[REDACTED PRIVATE KEY]", "PRIVATE KEY-----"),
    # JWTs, and the rest of one wrapped onto the next line (a formatter's or a terminal's width) when it ends one;
    # before Bearer, which would stop at the line end.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}(?:\r?\n[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){0,2})?"),
     REDACTED, "eyJ"),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]{8,}=*", re.I), r"\1 " + REDACTED, ""),
    # "clientSecret": "...", 'client_secret': '...', \"secretText\": \"...\", \\"refreshToken\\": \\"...\\" (JSON,
    # reprs, JSON escaped once or more).
    (re.compile(r"(" + _QUOTE + r"(?:" + _KEYS + r")" + _QUOTE + r"\s*:\s*)(" + _QUOTE + r")(?:(?!\2).)*\2", re.I),
     r"\1\2" + REDACTED + r"\2", ""),
    # Members whose name alone says too little, by the shape of their value (one token of 16 characters or more,
    # not a GUID): a SAS signature ("sig"), a JWK's private parts ("d", "p", "q", "dp", "dq", "qi"; "k" of a
    # symmetric key) and an authorization code ("code", when not words: Graph's "Authorization_RequestDenied" and
    # "Request_BadRequest.InvalidValue" stay; Entra's codes have digits).
    (re.compile(r"(" + _QUOTE + r"(?:sig|d|p|q|dp|dq|qi|k|(code))" + _QUOTE + r"\s*:\s*(" + _QUOTE + r"))"
                r"(?(2)(?=[A-Za-z0-9_]*[.~+/=%-])(?=[A-Za-z_.~+/=%-]*[0-9]))"  # a code: not words (with digits)
                r"(?![0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\3)[A-Za-z0-9_.~+/=%-]{16,}(?=\3)"),
     r"\1" + REDACTED, ""),
    # client_secret='...', refreshToken="...", client_secret: "..." (a keyword argument's or a dataclass's repr,
    # YAML); client_secret=..., refresh_token=... in forms, URLs and messages; client_secret: ...,
    # X-IDENTITY-HEADER: ..., api-key: ... (YAML, headers) when the value is a word of MIN_SECRET_LENGTH or more
    # ("client_secret: str" stays). One pattern for both: the groups of the form that did not match are empty.
    (re.compile(r"\b(" + _KEYS + r")(?:(\s*[=:]\s*)(['\"])(?:(?!\3).)*\3|(=|[ \t]*:[ \t]*(?=[^&\s'\",;]{8}))"
                r"[^&\s'\",;]+)", re.I),
     r"\1\2\3\4" + REDACTED + r"\3", ""),
    # code= (the function key, or an authorization code), state= (an OAuth sign-in's) and sig= (a SAS signature) in
    # a query or a form: at its start or after ? & or a space, after &amp; (HTML), \u0026 (JSON) or
    # SharedAccessSignature= (a connection string), and URL-encoded in a URL (%3F or %26 before, %3D for =); the
    # value ends where the next parameter starts, however the & is written.
    (re.compile(r"((?:^|[?&\s]|&amp;|\\u0026|%26|%3[Ff]|SharedAccessSignature=)(?:code|state|sig)(?:=|%3[Dd]))"
                r"""(?:[^&\s'"\\%]|\\(?!u0026)|%(?!26))+"""), r"\1" + REDACTED, ""),
    # A SharedKey signature (Table Storage) after its account name.
    (re.compile(r"\b(SharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]{8,}"), r"\1" + REDACTED, "SharedKey"),
    # The console's cookies (__Host-appconn, its login and OAuth ones), in a Cookie or Set-Cookie line.
    (re.compile(r"(__Host-appconn[A-Za-z0-9-]*=)[^;\s'\"]+"), r"\1" + REDACTED, "__Host-appconn"),
    # A password in a URL's userinfo: scheme://user:[REDACTED]@host.
    (re.compile(r"""(://[^/?#@:\s"\\]*:)[^/?#@\s"\\]+@"""), r"\1" + REDACTED + "@", "://"),
)

_lock = threading.Lock()


class _Kept:
    """Registered values, oldest first, and how many characters they hold."""

    def __init__(self) -> None:
        self.values: OrderedDict[str, None] = OrderedDict()
        self.characters = 0

    def add(self, form: str) -> None:
        if form not in self.values:
            self.characters += len(form)
        self.values[form] = None
        self.values.move_to_end(form)

    def forget_oldest(self) -> str:
        old, _ = self.values.popitem(last=False)
        self.characters -= len(old)
        return old


# Three sets, so that no number of values registered while a request is served (anything a caller sent that might
# be a secret, bogus ones included) pushes out the material the service keeps: values registered at request time
# (the most recent MAX_REGISTERED, up to MAX_REGISTERED_CHARACTERS), the material read from or written to Key
# Vault (``stored=True``: up to MAX_STORED_CHARACTERS, which only more stored material can push out) and the
# service's own secrets from its settings (never forgotten).
_registered = _Kept()
_stored = _Kept()
_settings: set[str] = set()
# Registered values by their first MIN_SECRET_LENGTH characters: finding them costs one dict lookup per
# position of the text, however many values are registered.
_by_prefix: dict[str, set[str]] = {}
_installed = False
_handled: ContextVar[frozenset[str]] = ContextVar("secrets_handled", default=frozenset())


def register_secret(value: object, *, stored: bool = False) -> None:
    """Redact ``value`` (and its JSON-escaped form) from every later log record. Short values are ignored.

    ``stored``: secret material the service keeps (read from or written to Key Vault), remembered apart from the
    values registered while a request is served, so that those can never push it out."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    kept, max_count, max_characters = (
        (_stored, None, MAX_STORED_CHARACTERS) if stored else (_registered, MAX_REGISTERED, MAX_REGISTERED_CHARACTERS)
    )
    with _lock:
        for form in _forms(value):
            _index(form)
            kept.add(form)
        while kept.values and (
                (max_count is not None and len(kept.values) > max_count) or kept.characters > max_characters):
            _unindex(kept.forget_oldest())


def _register_setting(value: str) -> None:
    """A secret of the service's own settings: never forgotten (there are a few)."""
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        for form in _forms(value):
            _index(form)
            _settings.add(form)


def _forms(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1]}


def _index(form: str) -> None:
    _by_prefix.setdefault(form[:MIN_SECRET_LENGTH], set()).add(form)


def _unindex(form: str) -> None:
    """Drop ``form`` from the index once no set holds it any more."""
    if form in _registered.values or form in _stored.values or form in _settings:
        return
    bucket = _by_prefix.get(form[:MIN_SECRET_LENGTH])
    if bucket is not None:
        bucket.discard(form)
        if not bucket:
            del _by_prefix[form[:MIN_SECRET_LENGTH]]


def forget_secrets() -> None:
    """Forget every registered value (tests)."""
    with _lock:
        for kept in (_registered, _stored):
            kept.values.clear()
            kept.characters = 0
        _settings.clear()
        _by_prefix.clear()


def _registered_in(text: str) -> set[str]:
    with _lock:
        if not _by_prefix:
            return set()
        found: set[str] = set()
        for start in range(len(text) - MIN_SECRET_LENGTH + 1):
            bucket = _by_prefix.get(text[start:start + MIN_SECRET_LENGTH])
            if bucket:
                found.update(value for value in bucket if text.startswith(value, start))
        return found


def handling(*values: str) -> AbstractContextManager[None]:
    """Secrets the running task handles but has not stored (credentials pasted into a request, being validated):
    redacted from what it (and the tasks and threads it starts) logs meanwhile. They are never registered for
    everyone: a value nobody has proved to be a secret must not blind other requests' records."""
    forms = frozenset(form for value in values if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH
                      for form in _forms(value))
    return scoped(_handled, _handled.get() | forms)


def redact(text: str) -> str:
    """``text`` without any registered secret (or one the running task handles) or anything that looks like one."""
    handled = {value for value in _handled.get() if value in text}
    for value in sorted(_registered_in(text) | handled, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern, replacement, marker in _PATTERNS:
        if marker in text:
            text = pattern.sub(replacement, text)
    return text


# A record's own attributes; any other is an ``extra=`` one, which exporters (OpenTelemetry's LoggingHandler, so
# Application Insights) send as an attribute of the record as it is.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite ``record`` in place when its message, exception, stack or ``extra=`` text holds a secret."""
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not format: keep their text, redacted
        message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), ()
    else:
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(text)
        if cleaned != text:
            # The exception itself holds the secret, and exporters read it (OpenTelemetry's exception.message and
            # exception.stacktrace): the record keeps only the cleaned text, in its message.
            record.msg, record.args = f"{record.getMessage()}\n{cleaned}", ()
            record.exc_info, record.exc_text = None, None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    _redact_extra(record)
    return record


def _redact_extra(record: logging.LogRecord) -> None:
    """The fields a log call attached (``extra=``), which exporters send as custom dimensions."""
    for name, value in record.__dict__.items():
        if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
            cleaned = redact(value)
            if cleaned != value:
                record.__dict__[name] = cleaned


class RedactingFilter(logging.Filter):
    """The same as a ``logging.Filter``, for handlers or loggers that want it explicitly."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


# Settings whose whole value is a secret (the webhook URL is a bearer credential of the receiver's workflow).
# IDENTITY_HEADER (MSI_SECRET on older hosts) guards the host's managed-identity token endpoint.
_SECRET_SETTINGS = frozenset({
    "AZURE_CLIENT_SECRET", "NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET", "IDENTITY_HEADER", "MSI_SECRET",
})


def _register_environment() -> None:
    for name, value in os.environ.items():
        if name.endswith(("_CLIENT_SECRET", "_ACCOUNT_KEY", "_FUNCTION_KEY")) or name in _SECRET_SETTINGS:
            _register_setting(value)
        for match in re.finditer(r"(?:AccountKey|SharedAccessKey)=([^;]+)", value):
            _register_setting(match.group(1))


def install() -> None:
    """Redact every log record from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                return redact_record(record)
            except Exception:  # never lose a record to the filter (e.g. at interpreter shutdown)
                record.msg, record.args, record.exc_info, record.exc_text = "[log record withheld]", (), None, None
                return record

        logging.setLogRecordFactory(factory)
        # A log call's ``extra=`` fields are set on the record after the factory made it: redacted once they are.
        make_record = logging.Logger.makeRecord
        attributes = _RECORD_ATTRIBUTES  # held here: at interpreter shutdown the module's globals may be None

        def made_with_extra(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(self, *args, **kwargs)
            try:
                if kwargs.get("extra") or (len(args) > _EXTRA_ARGUMENT and args[_EXTRA_ARGUMENT]):
                    _redact_extra(record)
            except Exception:  # never lose a record to the filter (e.g. at interpreter shutdown): its extra withheld
                for name in list(record.__dict__):
                    if name not in attributes:
                        record.__dict__[name] = "[withheld]"
            return record

        logging.Logger.makeRecord = made_with_extra  # type: ignore[method-assign]
    _register_environment()


# Logger.makeRecord(name, level, fn, lno, msg, args, exc_info, func=None, extra=None, sinfo=None): where ``extra`` is
_EXTRA_ARGUMENT = 8
