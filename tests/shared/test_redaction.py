"""The log redaction: patterns, registered values, records from any logger (SDKs included), exceptions."""

from __future__ import annotations

import json
import logging

import pytest

from shared import redaction
from shared.redaction import REDACTED, RedactingFilter, redact, redact_record, register_secret

JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nabcdef==\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize(("text", "secret"), [
    ("Authorization: Bearer abc.def-ghi_jkl~123=", "abc.def-ghi_jkl~123="),
    (f"token {JWT} was refused", JWT),
    ("body client_secret=s3cr3t-Value&grant_type=client_credentials", "s3cr3t-Value"),
    ("grant_type=refresh_token&refresh_token=0.AXoA-refresh.token&scope=x", "0.AXoA-refresh.token"),
    ('{"clientSecret": "s3cr3t~value", "tenantId": "t"}', "s3cr3t~value"),
    ("{'client_secret': 'py-repr-secret'}", "py-repr-secret"),
    ('{"secretText": "graph-made-secret", "keyId": "k"}', "graph-made-secret"),
    ('{\\"clientSecret\\": \\"escaped-json-secret\\"}', "escaped-json-secret"),
    ('"privateKey": "-----BEGIN"', "-----BEGIN"),
    (f"key material: {PEM} end", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIcutshort", "MIIcutshort"),
    ("GET /api/v1/x?code=function-key-value&limit=1", "function-key-value"),
    ("code_verifier=pkce-verifier-value", "pkce-verifier-value"),
    ("code=1.AXoA-authorization-code&grant_type=authorization_code", "1.AXoA-authorization-code"),
    ("callback ?state=oauth-state-value&code=x", "oauth-state-value"),
    ("https://acct.table.core.windows.net/T?sv=2024&sig=sas%2Bsignature%3D", "sas%2Bsignature%3D"),
    ("Authorization: SharedKey devstoreaccount1:c2hhcmVka2V5c2lnbmF0dXJl=", "c2hhcmVka2V5c2lnbmF0dXJl="),
    ("Cookie: __Host-appconn=s1.opaque-session-id; theme=dark", "s1.opaque-session-id"),
    ("Set-Cookie: __Host-appconn-oauth-ab12=browser-binding; Path=/", "browser-binding"),
    # a keyword argument's or a dataclass's repr (review I: only registered values saved them)
    ("Credentials(clientSecret='repr secret, with a space', tenantId='t')", "repr secret, with a space"),
    ('Grant(refresh_token="0.AXoA repr token")', "0.AXoA repr token"),
])
def test_patterns_are_redacted(text, secret):
    cleaned = redact(text)
    assert secret not in cleaned
    assert "REDACTED" in cleaned


def test_ordinary_text_is_left_alone():
    text = "Entra refused the credentials (AADSTS7000215); tenant 72f988bf-86f1-41af-91ab-2d7cd011db47, code 400"
    assert redact(text) == text
    graph = '{"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}'
    assert redact(graph) == graph  # Graph's error code is what an operator acts on


def test_registered_values_and_their_json_form_are_redacted():
    secret = 'Zq8~registered"secret\\value'
    register_secret(secret)
    register_secret("short")  # too short to register: never redacts ordinary words
    assert secret not in redact(f"oops {secret} oops")
    assert json.dumps(secret)[1:-1] not in redact(f"json {json.dumps({'v': secret})}")
    assert redact("short text") == "short text"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("azure.core.pipeline", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_records_are_rewritten_only_when_something_was_redacted():
    plain = redact_record(_record("GET %s -> %d", "/api/v1/x", 200))
    assert plain.msg == "GET %s -> %d" and plain.args == ("/api/v1/x", 200)
    dirty = redact_record(_record("request body %s", "client_secret=abcdefgh123"))
    assert "abcdefgh123" not in dirty.getMessage()


def test_exception_texts_are_redacted():
    try:
        raise ValueError("SDK said: Bearer sdk-token-value-123 was refused")
    except ValueError as error:
        record = redact_record(_record("failed", exc=error))
    formatted = logging.Formatter().format(record)
    assert "sdk-token-value-123" not in formatted
    assert formatted.startswith("failed\nTraceback") and "Bearer [REDACTED] was refused" in formatted
    assert record.exc_info is None  # exporters read the exception itself, which still holds it


def test_what_application_insights_is_sent_holds_no_secret():
    """OpenTelemetry's LoggingHandler (the one azure-monitor-opentelemetry installs) reads a record's exception
    and ``extra=`` attributes itself, not what a formatter prints."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler  # azure-monitor-opentelemetry's
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    secret = "Qx8~exported-secret-value-1"
    register_secret(secret)
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    try:
        raise RuntimeError(f"form client_secret={secret}&grant_type=client_credentials")
    except RuntimeError as error:
        failed = redact_record(_record("POST /x failed", exc=error))
    noted = redact_record(_record("audit %s", "connection.create"))
    noted.__dict__.update(audit_detail=f"refresh_token={secret}", audit_count=3)
    redact_record(noted)
    for record in (failed, noted):
        handler.emit(record)
    exported = [getattr(item, "log_record", item) for item in exporter.get_finished_logs()]
    assert len(exported) == 2
    for item in exported:
        assert secret not in f"{item.body} {dict(item.attributes or {})}"
    assert dict(exported[1].attributes or {})["audit_detail"] == f"refresh_token={REDACTED}"
    assert dict(exported[1].attributes or {})["audit_count"] == 3


def test_installed_filter_sees_every_logger_and_handler():
    register_secret("installed-filter-secret-1")
    redaction.install()
    redaction.install()  # idempotent
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = Keep()
    sdk = logging.getLogger("azure.identity._internal.test")
    sdk.addHandler(handler)
    try:
        sdk.warning("token request failed: %s", {"client_secret": "installed-filter-secret-1"})
        sdk.warning("Authorization: Bearer %s", JWT)
    finally:
        sdk.removeHandler(handler)
    assert len(seen) == 2
    assert not any("installed-filter-secret-1" in line or JWT in line for line in seen)
    assert all(REDACTED in line for line in seen)


def test_the_fields_a_log_call_attaches_are_redacted_too():
    """Found by a review: ``extra=`` fields (the audit line's detail, user agent and connection name; exported as
    custom dimensions) are set on the record after the record factory ran, so the installed redaction never saw
    them."""
    register_secret("extra-field-secret-1")
    redaction.install()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    logger = logging.getLogger("app_connections.audit.test")
    logger.addHandler(handler)
    try:
        logger.info("audit %s", "connection.create", extra={"audit_detail": "refresh_token=extra-field-secret-1",
                                                            "audit_user_agent": f"client {JWT}", "count": 3})
        logger.info("no extra")
    finally:
        logger.removeHandler(handler)
    record = seen[0]
    assert "extra-field-secret-1" not in record.__dict__["audit_detail"] and REDACTED in record.__dict__["audit_detail"]
    assert JWT not in record.__dict__["audit_user_agent"] and record.__dict__["count"] == 3
    assert seen[1].getMessage() == "no extra"


def test_the_filter_class_works_on_a_handler():
    record = _record("refresh_token=%s", "rt-value-123456")
    assert RedactingFilter().filter(record) is True
    assert "rt-value-123456" not in record.getMessage()


def test_registered_values_are_found_anywhere_and_the_oldest_are_forgotten_beyond_the_bound(monkeypatch):
    monkeypatch.setattr(redaction, "MAX_REGISTERED", 4)
    redaction.forget_secrets()
    values = [f"value-number-{n}-abcdef" for n in range(4)]
    for value in values:
        register_secret(value)
    glued = "x" + values[0] + values[3] + "y"
    assert redact(glued) == f"x{REDACTED}{REDACTED}y"
    assert redact(f"[{values[1]}]") == f"[{REDACTED}]"
    register_secret("a-fifth-secret-value")  # the oldest value is forgotten, so memory stays bounded
    assert values[0] in redact(values[0])
    assert redact("a-fifth-secret-value") == REDACTED
    redaction.forget_secrets()
    assert redact(values[3]) == values[3]


def test_what_holds_secret_material_never_shows_it_in_its_repr():
    from dataclasses import fields as dataclass_fields
    from datetime import UTC, datetime

    from shared.connections import Validated
    from shared.credentials import ParsedCertificate
    from shared.models import CertificateCredentialsIn, ClientSecretCredentialsIn
    from shared.records import PendingAuthorization
    from shared.rotation.protocol import _Run

    marker = "Qx8~repr-marker-secret-1"
    now = datetime.now(UTC)
    guid = "00000000-0000-0000-0000-000000000001"
    secret_form = ClientSecretCredentialsIn(tenantId=guid, clientId=guid, clientSecret=marker)
    holders = [
        secret_form,
        CertificateCredentialsIn(tenantId=guid, clientId=guid, certificateBody="cert", privateKey=marker),
        ParsedCertificate(b"cert", marker.encode(), "RSA", "a", "b", now, 2048),
        PendingAuthorization("app", guid, "https://x/cb", marker, now, now),
        Validated(secret_form, {"clientSecret": marker}, None),
        _Run(materials={"v1": {"clientSecret": marker}}),
    ]
    for holder in holders:
        assert marker not in repr(holder), type(holder).__name__
        assert marker not in str(holder), type(holder).__name__
    assert [f.name for f in dataclass_fields(Validated) if not f.repr] == ["material"]


def test_the_webhook_url_and_its_signing_key_from_the_environment_are_redacted(monkeypatch):
    url = "https://prod.westus.logic.azure.com/workflows/abc/triggers/manual?sig=bearer-like-signature"
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", url)
    monkeypatch.setenv("NOTIFY_WEBHOOK_SECRET", "webhook-signing-key-1")
    redaction._register_environment()
    assert redact(f"POST {url} failed; key webhook-signing-key-1") == f"POST {REDACTED} failed; key {REDACTED}"


async def test_a_secret_a_task_handles_is_redacted_from_its_own_records_only_and_only_meanwhile() -> None:
    """Credentials pasted into a request are redacted from what it logs while it validates them, never registered
    for everyone: a value nobody proved to be a secret must not blind other requests' records."""
    import asyncio
    import contextvars

    from shared.redaction import handling, redact

    pasted = "Pz8Q~" + "k" * 30
    others: list[str] = []

    async def another_request() -> None:
        await asyncio.sleep(0)
        others.append(redact(f"an unrelated name {pasted}"))

    with handling(pasted, "short"):
        elsewhere = asyncio.create_task(another_request())  # started within: it inherits the value
        assert redact(f"refused: '{pasted}'") == "refused: '[REDACTED]'"
        assert redact(f'{{"quoted": "{pasted}"}}') == '{"quoted": "[REDACTED]"}'
        await elsewhere
    outside = asyncio.get_running_loop().create_task(another_request(), context=contextvars.Context())
    await outside
    assert others == ["an unrelated name [REDACTED]", f"an unrelated name {pasted}"]
    assert redact(f"after: {pasted}") == f"after: {pasted}"
