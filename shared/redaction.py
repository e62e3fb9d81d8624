"""Secret hygiene for logs: every log record is redacted as it is created, SDK records included.

Two nets:

* patterns: ``Bearer <token>``, JWTs (``eyJ...``), ``client_secret=...``/``refresh_token=...`` and the like in
  forms and URLs, ``clientSecret='...'`` in reprs, ``"clientSecret": "..."``/``"secretText": "..."`` in JSON or
  reprs, ``?code=`` (function keys
  and authorization codes), PEM private keys;
* exact values registered at runtime with :func:`register_secret` wherever the service handles secret material
  (Key Vault reads and writes, the service's own and the OAuth clients' secrets from the environment).

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
MAX_REGISTERED = 4096

_KEYS = (
    r"client_?secret|clientSecret|secret_?text|secretText|refresh_?token|refreshToken|access_?token|accessToken"
    r"|id_?token|idToken|client_?assertion|clientAssertion|code_?verifier|password|private_?key|privateKey"
    r"|x-functions-key"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, whole or cut short.
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S),
     "[REDACTED PRIVATE KEY]"),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]{8,}=*", re.I), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    # "clientSecret": "...", 'client_secret': '...', \"secretText\": \"...\" (JSON, reprs, escaped JSON).
    (re.compile(r"""((?:\\?["'])(?:""" + _KEYS + r""")(?:\\?["'])\s*:\s*)(\\?["'])((?:(?!\2).)*)\2""", re.I),
     r"\1\2" + REDACTED + r"\2"),
    # client_secret='...', refreshToken="..." (a keyword argument's or a dataclass's repr).
    (re.compile(r"\b(" + _KEYS + r")(\s*=\s*)(['\"])((?:(?!\3).)*)\3", re.I), r"\1\2\3" + REDACTED + r"\3"),
    # client_secret=..., refresh_token=... in forms, URLs and messages.
    (re.compile(r"\b(" + _KEYS + r")=[^&\s'\",;]+", re.I), r"\1=" + REDACTED),
    # code= (the function key, or an authorization code), state= (an OAuth sign-in's) and sig= (a SAS signature) in
    # a query or a form, at its start or after ? & or a space.
    (re.compile(r"((?:^|[?&\s])(?:code|state|sig)=)[^&\s'\"]+"), r"\1" + REDACTED),
    # A SharedKey signature (Table Storage) after its account name.
    (re.compile(r"\b(SharedKey(?:Lite)?\s+[^:\s]+:)[A-Za-z0-9+/=]{8,}"), r"\1" + REDACTED),
    # The console's cookies (__Host-appconn, its login and OAuth ones), in a Cookie or Set-Cookie line.
    (re.compile(r"(__Host-appconn[A-Za-z0-9-]*=)[^;\s'\"]+"), r"\1" + REDACTED),
)

_lock = threading.Lock()
_secrets: OrderedDict[str, None] = OrderedDict()
# Registered values by their first MIN_SECRET_LENGTH characters: finding them costs one dict lookup per
# position of the text, however many values are registered.
_by_prefix: dict[str, set[str]] = {}
_installed = False
_handled: ContextVar[frozenset[str]] = ContextVar("secrets_handled", default=frozenset())


def register_secret(value: object) -> None:
    """Redact ``value`` (and its JSON-escaped form) from every later log record. Short values are ignored."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, json.dumps(value)[1:-1]}
    with _lock:
        for form in forms:
            if form not in _secrets:
                _by_prefix.setdefault(form[:MIN_SECRET_LENGTH], set()).add(form)
            _secrets[form] = None
            _secrets.move_to_end(form)
        while len(_secrets) > MAX_REGISTERED:
            old, _ = _secrets.popitem(last=False)
            bucket = _by_prefix.get(old[:MIN_SECRET_LENGTH])
            if bucket is not None:
                bucket.discard(old)
                if not bucket:
                    del _by_prefix[old[:MIN_SECRET_LENGTH]]


def forget_secrets() -> None:
    """Forget every registered value (tests)."""
    with _lock:
        _secrets.clear()
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
                      for form in (value, json.dumps(value)[1:-1]))
    return scoped(_handled, _handled.get() | forms)


def redact(text: str) -> str:
    """``text`` without any registered secret (or one the running task handles) or anything that looks like one."""
    handled = {value for value in _handled.get() if value in text}
    for value in sorted(_registered_in(text) | handled, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
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
_SECRET_SETTINGS = frozenset({"AZURE_CLIENT_SECRET", "NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET"})


def _register_environment() -> None:
    for name, value in os.environ.items():
        if name.endswith(("_CLIENT_SECRET", "_ACCOUNT_KEY", "_FUNCTION_KEY")) or name in _SECRET_SETTINGS:
            register_secret(value)
        for match in re.finditer(r"AccountKey=([^;]+)", value):
            register_secret(match.group(1))


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

        def made_with_extra(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(self, *args, **kwargs)
            if kwargs.get("extra") or (len(args) > _EXTRA_ARGUMENT and args[_EXTRA_ARGUMENT]):
                try:
                    _redact_extra(record)
                except Exception:  # never lose a record to the filter
                    for name in list(record.__dict__):
                        if name not in _RECORD_ATTRIBUTES:
                            record.__dict__[name] = "[withheld]"
            return record

        logging.Logger.makeRecord = made_with_extra  # type: ignore[method-assign]
    _register_environment()


# Logger.makeRecord(name, level, fn, lno, msg, args, exc_info, func=None, extra=None, sinfo=None): where ``extra`` is
_EXTRA_ARGUMENT = 8
