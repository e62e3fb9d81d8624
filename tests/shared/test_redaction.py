"""The log redaction: patterns, registered values, records from any logger (SDKs included), exceptions."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

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


@contextlib.contextmanager
def records_of(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records logger ``name`` emits inside the block (as a handler of it receives them)."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


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
    sdk = logging.getLogger("azure.identity._internal.test")
    with records_of(sdk.name) as records:
        sdk.warning("token request failed: %s", {"client_secret": "installed-filter-secret-1"})
        sdk.warning("Authorization: Bearer %s", JWT)
    seen = [logging.Handler().format(record) for record in records]
    assert len(seen) == 2
    assert not any("installed-filter-secret-1" in line or JWT in line for line in seen)
    assert all(REDACTED in line for line in seen)


def test_the_fields_a_log_call_attaches_are_redacted_too():
    """Found by a review: ``extra=`` fields (the audit line's detail, user agent and connection name; exported as
    custom dimensions) are set on the record after the record factory ran, so the installed redaction never saw
    them."""
    register_secret("extra-field-secret-1")
    redaction.install()
    logger = logging.getLogger("app_connections.audit.test")
    with records_of(logger.name) as seen:
        logger.info("audit %s", "connection.create", extra={"audit_detail": "refresh_token=extra-field-secret-1",
                                                            "audit_user_agent": f"client {JWT}", "count": 3})
        logger.info("no extra")
    record = seen[0]
    assert "extra-field-secret-1" not in record.__dict__["audit_detail"] and REDACTED in record.__dict__["audit_detail"]
    assert JWT not in record.__dict__["audit_user_agent"] and record.__dict__["count"] == 3
    assert seen[1].getMessage() == "no extra"


def test_a_record_with_extra_fields_is_still_made_when_the_modules_globals_are_gone(monkeypatch):
    """Found by a review: at interpreter shutdown a module's globals may be None, and the check whether a log call
    attached fields ran outside the guard that keeps every record: the log call raised and the record was lost."""
    redaction.install()
    monkeypatch.setattr(redaction, "_EXTRA_ARGUMENT", None)
    monkeypatch.setattr(redaction, "_RECORD_ATTRIBUTES", None)
    logger = logging.getLogger("app_connections.audit.test")
    with records_of(logger.name) as seen:
        logger.warning("shutting down", extra={"audit_detail": "refresh_token=extra-field-secret-2"})
    assert len(seen) == 1 and seen[0].levelno == logging.WARNING
    assert seen[0].__dict__["audit_detail"] == "[withheld]"  # never shown as it is when it could not be redacted


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


# Review (secret shapes the patterns missed): each shape is redacted with nothing registered for it, and the text
# around it stays as it was.

CLIENT_SECRET = "Xy38Q~abcDEFghiJKLmnoPQRstuVWXyz0123456789"  # Entra's shape: 40 characters, a '~' in the 5th
REFRESH_TOKEN = "1.AXoAq3t5WlLdGkKs9gQk5tH0bZ_rY2vC7mN8pQ4xS6uW1eF3jK9lO0iH-dT2gB5nM7aZ"
AUTH_CODE = "1.AXoAq3t5WlLdGkKs9gQk5tH0bY1cRtU6vW8xZ2aB4dE7fG9hJ0kL3mN5oP-qS_uV"
SAS_SIG = "Kx7%2BtB9yQf3mZ1vR8pL0sW4nC6dE2hJ5kA9uXgYoTq8%3D"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
IDENTITY_HEADER = "0b8c5a1e-3f27-4d9b-9a6e-7c2d41f5e830"
API_KEY = "4f1c9e2b7a6d48e3b5c0a9f8e7d6c5b4"


@pytest.fixture(autouse=True)
def nothing_registered():
    """Each test sees only what it registers (a value another test left would hide what a pattern misses)."""
    redaction.forget_secrets()
    yield
    redaction.forget_secrets()


def test_a_client_secret_after_a_colon_is_redacted_as_after_an_equals_sign():
    assert redact(f"client_secret: {CLIENT_SECRET}\ntenant: t") == f"client_secret: {REDACTED}\ntenant: t"
    assert redact(f'clientSecret: "{CLIENT_SECRET}", tenant') == f'clientSecret: "{REDACTED}", tenant'
    # a word too short to be a secret, as a type annotation in a traceback shows one, stays
    assert redact("def f(client_secret: str, refresh_token: str | None)") == \
        "def f(client_secret: str, refresh_token: str | None)"


def test_a_refresh_token_in_json_escaped_twice_is_redacted():
    """A Key Vault body (JSON in JSON) printed as a repr: the quotes around the member are preceded by \\\\."""
    text = repr(json.dumps({"value": json.dumps({"refreshToken": REFRESH_TOKEN, "tenant": "t"})}))
    assert redact(text) == text.replace(REFRESH_TOKEN, REDACTED)
    assert REFRESH_TOKEN not in redact(json.dumps(text))  # and once more


def test_an_authorization_code_as_a_json_member_is_redacted_and_an_error_code_stays():
    assert redact(json.dumps({"code": AUTH_CODE, "state": "x"})) == json.dumps({"code": REDACTED, "state": "x"})
    assert AUTH_CODE not in redact(repr({"code": AUTH_CODE}))
    for ordinary in ('{"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist."}}',
                     '{"code": "AADSTS7000215", "status": 401}', '{"code": "Forbidden"}'):
        assert redact(ordinary) == ordinary


@pytest.mark.parametrize(("text", "expected"), [
    (f"https://app.example/cb?state=s&amp;code={AUTH_CODE}&amp;session_state=x",  # HTML
     f"https://app.example/cb?state={REDACTED}&amp;code={REDACTED}&amp;session_state=x"),
    (f'"redirect": "https://app.example/cb?x=1\\u0026code={AUTH_CODE}\\u0026y=2"',  # JSON
     f'"redirect": "https://app.example/cb?x=1\\u0026code={REDACTED}\\u0026y=2"'),
    (f"returnTo=%2Fcb%3Fx%3D1%26code%3D{AUTH_CODE}%26y%3D2", f"returnTo=%2Fcb%3Fx%3D1%26code%3D{REDACTED}%26y%3D2"),
    (f"returnTo=%2Fcb%3Fcode%3D{AUTH_CODE}", f"returnTo=%2Fcb%3Fcode%3D{REDACTED}"),  # URL-encoded in a URL
    (f"https://acct.blob.core.windows.net/c/b?sv=2024-11-04&amp;sr=b&amp;sig={SAS_SIG}",
     f"https://acct.blob.core.windows.net/c/b?sv=2024-11-04&amp;sr=b&amp;sig={REDACTED}"),
    (f"BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sig={SAS_SIG}&sv=2024-11-04&sr=c",
     f"BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sig={REDACTED}&sv=2024-11-04&sr=c"),
])
def test_a_code_or_a_sas_signature_after_an_encoded_separator_is_redacted(text, expected):
    assert redact(text) == expected


def test_a_sas_signature_as_a_json_member_is_redacted():
    text = json.dumps({"sv": "2024-11-04", "sr": "c", "sig": SAS_SIG, "se": "2026-01-01T00:00:00Z"})
    assert redact(text) == text.replace(SAS_SIG, REDACTED)


def test_an_account_key_or_a_shared_access_key_in_a_connection_string_is_redacted_unregistered():
    storage = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.net"
    assert redact(storage) == storage.replace(ACCOUNT_KEY, REDACTED)
    bus = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={ACCOUNT_KEY[:44]}"
    assert redact(bus) == bus.replace(ACCOUNT_KEY[:44], REDACTED)


@pytest.mark.parametrize(("text", "secret"), [
    (f"X-IDENTITY-HEADER: {IDENTITY_HEADER}\nMetadata: true", IDENTITY_HEADER),
    (f"headers {{'X-IDENTITY-HEADER': '{IDENTITY_HEADER}', 'Metadata': 'true'}}", IDENTITY_HEADER),
    (f"api-key: {API_KEY}\nAccept: application/json", API_KEY),
    (f"x-functions-key: {API_KEY}", API_KEY),
])
def test_the_managed_identity_header_and_an_api_key_header_are_redacted(text, secret):
    cleaned = redact(text)
    assert cleaned == text.replace(secret, REDACTED)


def test_the_managed_identity_secrets_of_the_host_from_the_environment_are_registered(monkeypatch):
    msi_secret = "6f0a7c2e9b3d4e8f1a5c7b9d2e4f6a8c"
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    monkeypatch.setenv("MSI_SECRET", msi_secret)
    redaction._register_environment()
    assert redact(f"GET token with {IDENTITY_HEADER} / {msi_secret} failed") == \
        f"GET token with {REDACTED} / {REDACTED} failed"


def test_a_function_key_from_the_environment_is_registered_at_install(monkeypatch):
    """A setting whose name ends ``_FUNCTION_KEY`` (``LOCALDEV_FUNCTION_KEY``: what ``x-functions-key`` carries)
    is a secret of the service's: :func:`~shared.redaction.install` registers it with the others."""
    function_key = "Fk7~function-key-from-the-environment"
    monkeypatch.setenv("LOCALDEV_FUNCTION_KEY", function_key)
    monkeypatch.setattr(redaction, "_installed", False)  # as in a process starting
    monkeypatch.setattr(logging.Logger, "makeRecord", logging.Logger.makeRecord)  # put back after the test
    factory = logging.getLogRecordFactory()
    try:
        redaction.install()
    finally:
        logging.setLogRecordFactory(factory)
    assert redact(f"the host checked {function_key} and answered 401") == \
        f"the host checked {REDACTED} and answered 401"


def test_a_registered_secret_that_starts_with_another_is_redacted_whole():
    """The longest registered value is replaced first: the shorter one it starts with would leave its tail."""
    register_secret("Kq7zW2pLx9")
    register_secret("Kq7zW2pLx9-TAIL-OF-THE-LONGER-SECRET")
    assert redact("value Kq7zW2pLx9-TAIL-OF-THE-LONGER-SECRET end") == f"value {REDACTED} end"
    assert redact("value Kq7zW2pLx9 end") == f"value {REDACTED} end"


def test_the_stack_of_a_record_logged_with_stack_info_is_redacted():
    """``stack_info=True`` adds the caller's stack to a record (its source lines): a registered secret in it goes,
    and the rest of it stays."""
    register_secret("stack-info-secret-1")
    stack = 'Stack (most recent call last):\n  File "x.py", line 3, in f\n    sign_in("stack-info-secret-1")'
    record = logging.LogRecord("azure.identity", logging.WARNING, __file__, 1, "sign-in failed", (), None,
                               sinfo=stack)
    cleaned = redact_record(record).stack_info
    assert cleaned == stack.replace("stack-info-secret-1", REDACTED)
    assert record.getMessage() == "sign-in failed"


def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_the_tail_of_a_private_key_without_its_begin_line_is_redacted():
    """A PEM split across two log records: the second holds base64 lines and the END line only."""
    pem = _private_key_pem()
    lines = pem.strip().split("\n")
    tail = "\n".join(lines[2:])  # no BEGIN line, nor the first base64 line
    assert redact(f"key (part 2/2): {tail}\nnext") == "key (part 2/2): [REDACTED PRIVATE KEY]\nnext"
    escaped = json.dumps(tail)  # as a JSON value: the line breaks are \n
    assert redact(f'{{"part": {escaped}}}') == '{"part": "[REDACTED PRIVATE KEY]"}'
    rsa_tail = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt\n-----END RSA PRIVATE KEY-----"
    assert redact(rsa_tail) == "[REDACTED PRIVATE KEY]"
    certificate = "MIIC+zCCAeOgAwIBAgIJAL\n-----END CERTIFICATE-----"  # public: stays
    assert redact(certificate) == certificate


def test_the_private_members_of_a_jwk_are_redacted_and_its_public_ones_stay():
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.fakes import pooled_rsa_key

    def b64(number: int) -> str:
        import base64

        return base64.urlsafe_b64encode(number.to_bytes((number.bit_length() + 7) // 8, "big")).decode().rstrip("=")

    rsa = pooled_rsa_key(2048).private_numbers()
    public = {"kty": "RSA", "kid": "2c5f2d7e-key-1", "n": b64(rsa.public_numbers.n), "e": "AQAB"}
    private = {"d": b64(rsa.d), "p": b64(rsa.p), "q": b64(rsa.q), "dp": b64(rsa.dmp1), "dq": b64(rsa.dmq1),
               "qi": b64(rsa.iqmp)}
    text = json.dumps(public | private)
    assert redact(text) == json.dumps(public | dict.fromkeys(private, REDACTED))
    d = b64(ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value)
    assert redact(repr({"kty": "EC", "crv": "P-256", "d": d})) == repr({"kty": "EC", "crv": "P-256", "d": REDACTED})
    symmetric = json.dumps({"kty": "oct", "k": "GawgguFyGrWKav7AX4VKUg", "alg": "A128KW"})
    assert redact(symmetric) == symmetric.replace("GawgguFyGrWKav7AX4VKUg", REDACTED)
    for ordinary in ('{"d": "2026-01-01T00:00:00Z"}', '{"p": "72f988bf-86f1-41af-91ab-2d7cd011db47"}', '{"q": "x"}'):
        assert redact(ordinary) == ordinary


def test_the_password_in_a_urls_userinfo_is_redacted_and_the_user_and_host_stay():
    assert redact("POST https://svc:S3cr3t-Passw0rd!@example.com/hook failed") == \
        f"POST https://svc:{REDACTED}@example.com/hook failed"
    assert redact("amqps://:Kq9~pw@ns.example.net") == f"amqps://:{REDACTED}@ns.example.net"
    for ordinary in ("https://user@example.com/x", "https://example.com:8443/a?mail=a@b.example",
                     "http://127.0.0.1:10002/devstoreaccount1/Connections()", "see https://learn.microsoft.com/x"):
        assert redact(ordinary) == ordinary


def _jwt() -> str:
    import base64

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = part(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = part(json.dumps({"aud": "api://x", "iss": "https://sts.windows.net/t/", "exp": 1893456000}).encode())
    return f"{header}.{payload}.{part(bytes(range(256)))}"  # an RS256 signature is 256 bytes


@pytest.mark.parametrize("cut", ["signature", "payload"])
def test_the_rest_of_a_jwt_wrapped_onto_the_next_line_is_redacted(cut):
    jwt = _jwt()
    at = jwt.rindex(".") + 100 if cut == "signature" else jwt.index(".") + 10
    wrapped = f"token {jwt[:at]}\n{jwt[at:]} was refused"
    assert redact(wrapped) == f"token {REDACTED} was refused"
    assert redact(f"Authorization: Bearer {jwt[:at]}\n{jwt[at:]}") == f"Authorization: Bearer {REDACTED}"
    # a line after one that ends otherwise, or an indented one (a traceback's), stays
    assert redact(f"token {jwt}.\nnext line") == f"token {REDACTED}.\nnext line"
    assert redact(f"token {jwt}\n  File x") == f"token {REDACTED}\n  File x"


def test_ordinary_lines_the_service_writes_stay():
    for text in (
        "connection 72f988bf-86f1-41af-91ab-2d7cd011db47 of app azure-key-vault rotated; new key id "
        "5b1f9a3c-1c2d-4e5f-8a9b-0c1d2e3f4a5b, old one 9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a revoked",
        "GET https://graph.microsoft.com/v1.0/applications(appId='72f988bf-86f1-41af-91ab-2d7cd011db47') -> 404",
        "Key Vault answered 403 for https://kv-appconn.vault.azure.net/secrets/appconn-x/0a1b2c3d4e5f?api-version=7.5",
        "Entra answered invalid_grant (AADSTS70008), code 400, for tenant 72f988bf-86f1-41af-91ab-2d7cd011db47",
        '{"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}',
        "'X-IDENTITY-HEADER' is sent; api-key header absent; AccountName=acct",
        "-----END CERTIFICATE-----",
    ):
        assert redact(text) == text


def test_request_time_registrations_never_push_out_stored_material_nor_the_services_own_secrets(monkeypatch):
    """Bogus credentials a caller submits are registered before they are checked: however many, they push out
    only one another, never what the vault holds nor the service's settings."""
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "Sv8~service-own-client-secret-value")
    redaction._register_environment()
    register_secret(CLIENT_SECRET, stored=True)  # as read from Key Vault
    for n in range(redaction.MAX_REGISTERED * 2):
        register_secret(f"Bg8~bogus-credential-{n:06d}-xxxxxxxxxxxxxxxx")
    line = f"x {CLIENT_SECRET} y Sv8~service-own-client-secret-value z"
    assert redact(line) == f"x {REDACTED} y {REDACTED} z"
    assert redact("Bg8~bogus-credential-000000-xxxxxxxxxxxxxxxx") != REDACTED  # the oldest bogus one went
    last = f"Bg8~bogus-credential-{redaction.MAX_REGISTERED * 2 - 1:06d}-xxxxxxxxxxxxxxxx"
    assert redact(last) == REDACTED


def test_request_time_registrations_are_bounded_by_their_characters_too(monkeypatch):
    monkeypatch.setattr(redaction, "MAX_REGISTERED_CHARACTERS", 100)
    register_secret("a" * 60 + "-first")
    register_secret("b" * 60 + "-second")  # the two together hold more than 100 characters
    assert redact("a" * 60 + "-first") != REDACTED
    assert redact("b" * 60 + "-second") == REDACTED


def test_stored_material_is_bounded_by_its_characters_and_only_stored_material_pushes_it_out(monkeypatch):
    monkeypatch.setattr(redaction, "MAX_STORED_CHARACTERS", 100)
    register_secret("stored-one-" + "a" * 30, stored=True)
    for n in range(50):
        register_secret(f"request-value-{n:04d}")
    assert redact("stored-one-" + "a" * 30) == REDACTED
    register_secret("stored-two-" + "b" * 30, stored=True)
    register_secret("stored-one-" + "a" * 30, stored=True)  # read again: the most recent
    register_secret("stored-three-" + "c" * 30, stored=True)
    assert redact("stored-one-" + "a" * 30) == REDACTED
    assert redact("stored-two-" + "b" * 30) != REDACTED  # the least recently used went


def test_a_value_registered_both_ways_stays_while_either_holds_it(monkeypatch):
    monkeypatch.setattr(redaction, "MAX_REGISTERED", 2)
    register_secret(CLIENT_SECRET)
    register_secret(CLIENT_SECRET, stored=True)
    register_secret("request-value-0001")
    register_secret("request-value-0002")  # CLIENT_SECRET has left the request-time set
    assert redact(CLIENT_SECRET) == REDACTED


async def test_the_vault_registers_the_secret_fields_it_reads_and_writes_but_not_a_public_certificate():
    from types import SimpleNamespace

    from shared.store.vault import SecretVault

    certificate = "-----BEGIN CERTIFICATE-----\nMIIC+zCCAeOgAwIBAgIJAL\n-----END CERTIFICATE-----\n"
    key = _private_key_pem()

    class Secrets:
        async def set_secret(self, name, value, **kwargs):
            return SimpleNamespace(value=value, properties=SimpleNamespace(version="v1"))

        async def get_secret(self, name, version):
            return SimpleNamespace(value=json.dumps({"clientSecret": CLIENT_SECRET}))

    clients = SimpleNamespace(secrets=Secrets)
    vault = SecretVault(clients)
    await vault.write("appconn-x", {"certificateBody": certificate, "privateKey": key}, {})
    await vault.get("appconn-y", "v1")
    assert redaction._registered.values == {}  # kept apart from what requests register
    assert set(redaction._stored.values) == {key, json.dumps(key)[1:-1], CLIENT_SECRET}
    assert redact(f"cert {certificate}") == f"cert {certificate}"


def test_an_error_code_of_words_with_a_dot_is_not_taken_for_an_authorization_code() -> None:
    """(Review of the redaction fixes, 6.) Graph's ``Request_BadRequest.InvalidValue`` was redacted; an
    authorization code has digits."""
    from shared.redaction import redact

    assert redact('{"code": "Request_BadRequest.InvalidValue"}') == '{"code": "Request_BadRequest.InvalidValue"}'
    assert redact('{"code": "0.AXoAq3Lm-9xTzK8vN2wPbR.c7Yd"}') == '{"code": "[REDACTED]"}'
