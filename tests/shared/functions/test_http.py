"""Request bodies are read defensively and every failure is a problem document."""

import json

import azure.functions as func
import pytest

from shared.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from shared.fields import page_size
from shared.functions.http import MAX_BODY_BYTES, answer, query_int, read_json


def request(body: bytes = b"", content_type: str | None = "application/json", params=None) -> func.HttpRequest:
    headers = {"content-type": content_type} if content_type else {}
    return func.HttpRequest(
        method="POST", url="http://localhost/api/v1/x?y=1", headers=headers, params=params or {}, body=body
    )


def test_json_object_is_returned():
    assert read_json(request(b'{"a": [1, {"b": null}]}')) == {"a": [1, {"b": None}]}


def test_charset_parameter_and_vendor_json_types_are_accepted():
    assert read_json(request(b"{}", "application/merge-patch+json; charset=utf-8")) == {}


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"{", "application/json", InvalidRequest),
        (b"", "application/json", InvalidRequest),
        (b"\xff\xfe{}", "application/json", InvalidRequest),
        (b'{"a": 1, "a": 2}', "application/json", InvalidRequest),
        (b'{"a": NaN}', "application/json", InvalidRequest),  # Python's parser takes them; JSON has none
        (b'{"a": [Infinity, -Infinity]}', "application/json", InvalidRequest),
        (b"[" * 5000 + b"]" * 5000, "application/json", InvalidRequest),
        (b"{}", "text/plain", UnsupportedMediaType),
        (b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}', "application/json", PayloadTooLarge),
    ],
    ids=["malformed", "empty", "not-utf8", "duplicate-key", "nan", "infinity", "too-deep", "wrong-type",
         "too-large"],
)
def test_bad_bodies_raise_the_matching_problem(body, content_type, error):
    with pytest.raises(error):
        read_json(request(body, content_type))


def test_brackets_inside_strings_do_not_count_as_depth():
    assert read_json(request(json.dumps({"s": "[" * 100}).encode())) == {"s": "[" * 100}


@pytest.mark.parametrize("given", ["ten", " 5", "5 ", "+5", "1_000", "\u0665", "0x10", "1e3", "-", "9" * 10 + "x"])
def test_query_int_takes_plain_ascii_digits_only(given):
    with pytest.raises(InvalidRequest):
        query_int(request(params={"limit": given}), "limit")


def test_query_int_reads_an_integer_or_nothing():
    assert query_int(request(params={"limit": "10"}), "limit") == 10
    assert query_int(request(params={"limit": "-1"}), "limit") == -1  # the route says what range it takes
    assert query_int(request(), "limit") is None


def test_leading_zeros_do_not_make_a_small_number_large():
    assert query_int(request(params={"limit": "0" * 30 + "5"}), "limit") == 5  # (review Z1)
    assert query_int(request(params={"limit": "0" * 5000 + "5"}), "limit") == 5  # past int()'s limit (review Z3)
    assert query_int(request(params={"limit": "-" + "0" * 5000}), "limit") == 0


@pytest.mark.parametrize("given", ["10000000000", "9" * 20, "9" * 5000, "-" + "9" * 5000])
def test_a_number_of_any_length_is_a_number_for_the_range_check_to_refuse(given):
    """(Review FB 10.) ``limit=10000000000`` was answered 'must be an integer': it is one, out of range."""
    value = query_int(request(params={"limit": given}), "limit")
    assert value is not None and abs(value) >= 10**10 and (value < 0) is given.startswith("-")
    with pytest.raises(InvalidRequest) as refused:
        page_size(value)
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [("/limit", "must be between 1 and 1000")]


async def test_answer_turns_domain_errors_into_problems():
    async def handler(req):
        raise NotFound("No such thing.")

    response = await answer(handler, request(), "/api/v1/x")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    problem = json.loads(response.get_body())
    assert problem == {
        "type": "urn:app-connections:problem:not-found",
        "title": "Not found",
        "status": 404,
        "detail": "No such thing.",
        "instance": "/api/v1/x",
    }


async def test_answer_hides_unexpected_errors_behind_a_generic_500(caplog):
    async def handler(req):
        raise RuntimeError("internal detail")

    response = await answer(handler, request(), "/api/v1/x")
    assert response.status_code == 500
    assert b"internal detail" not in response.get_body()


async def test_answer_maps_unmapped_azure_failures_to_502():
    from azure.core.exceptions import ServiceRequestError

    async def handler(req):
        raise ServiceRequestError("connection refused")

    response = await answer(handler, request(), "/api/v1/x")
    assert response.status_code == 502
    assert json.loads(response.get_body())["type"].endswith("upstream-error")


class _SessionsDown:
    """The session table cannot be reached (the network under the Table client failed)."""

    async def get(self, bucket, key):
        from azure.core.exceptions import ServiceRequestError

        raise ServiceRequestError("connection refused")


@pytest.mark.parametrize(("raised", "status"), [
    (ConnectionResetError("reset by peer"), 502), (TimeoutError(), 502),
    (FileNotFoundError("shared/openapi.json"), 500), (OSError("not a network error"), 500)])
async def test_an_error_of_the_network_is_a_502_and_any_other_os_error_a_500_with_its_trace(raised, status, caplog):
    """Only the network under an Azure call is an Azure failure; a file missing from the package (or any other
    ``OSError``) is the service's own defect, logged with its trace (review V)."""
    async def handler(req):
        raise raised

    response = await answer(handler, request(), "/api/v1/x")
    assert response.status_code == status
    assert bool([r for r in caplog.records if r.exc_info]) is (status == 500)


@pytest.mark.parametrize("route", ["auth/session", "api/v1/app-connections/azure-key-vault"])
async def test_a_session_that_cannot_be_read_is_a_502_without_a_trace_not_a_500(route, monkeypatch, caplog):
    """A Table Storage failure while the caller's console session is read is an Azure failure like any other (a
    502, a warning), not a defect (a 500 with a stack trace in the log: review S)."""
    from datetime import UTC, datetime

    import shared.wiring as wiring
    from shared.functions.connections import list_app_connections
    from shared.functions.console_auth import console_session
    from shared.sessions import Sessions
    from shared.settings import get_settings, reset_settings

    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    reset_settings()
    try:
        monkeypatch.setattr(wiring, "sessions",
                            lambda: Sessions(_SessionsDown(), lambda: datetime.now(UTC), get_settings()))
        handler = console_session if route == "auth/session" else list_app_connections
        req = func.HttpRequest("GET", f"http://localhost/{route}", body=b"", params={},
                               headers={"cookie": "__Host-appconn=2099010100." + "a" * 43},
                               route_params={"app": "azure-key-vault"})
        response = await handler(req)
    finally:
        reset_settings()
    assert response.status_code == 502, response.get_body()
    assert json.loads(response.get_body())["type"].endswith("upstream-error")
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(("forwarded", "recorded"), [
    ("203.0.113.9", "203.0.113.9"),
    ("203.0.113.9:51234", "203.0.113.9"),
    ("6.6.6.6, 203.0.113.9:51234", "203.0.113.9"),  # the caller's own entry first: not believed
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("fe80::1%client_secret=hunter2", "fe80::1"),  # a zone is any text: dropped
    ("[fe80::1%eth0]:443", "fe80::1"),
    ("203.0.113.9, not-an-ip-" + "a" * 60, None),
    ("", None),
    (None, None),
])
def test_the_client_ip_is_the_last_forwarded_address_the_front_end_appended(forwarded, recorded):
    from shared.functions.http import _client_ip

    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    req = func.HttpRequest(method="GET", url="http://localhost/api/v1/x", headers=headers, params={}, body=b"")
    assert _client_ip(req) == recorded


async def test_every_api_answer_is_never_cached_sniffed_run_or_framed():
    async def fails(req):
        raise NotFound("No '<script>' here.")

    async def works(req):
        from shared.functions.http import json_response

        return json_response({"ok": True})

    for handler in (fails, works):
        response = await answer(handler, request(), "/api/v1/x")
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_refused_as_unsupported_not_as_bad_utf8(encoding):
    req = func.HttpRequest(method="POST", url="http://localhost/api/v1/x", params={}, body=b"\x1f\x8b\x08\x00",
                           headers={"content-type": "application/json", "content-encoding": encoding})
    with pytest.raises(UnsupportedMediaType, match="Content-Encoding") as refused:
        read_json(req)
    assert refused.value.headers == {"Accept-Encoding": "identity"}  # RFC 7694: which codings are taken (none)
    plain = func.HttpRequest(method="POST", url="http://localhost/api/v1/x", params={}, body=b'{"a": 1}',
                             headers={"content-type": "application/json", "content-encoding": "identity"})
    assert read_json(plain) == {"a": 1}


@pytest.mark.parametrize(("query", "pointers"), [
    ("limit=1&limit=1000", ["/limit"]),
    ("name=a&description=b&name=c&description=d", ["/name", "/description"]),
    ("a%2Fb=1&a/b=2", ["/a~1b"]),
])
async def test_a_query_parameter_given_twice_is_refused_before_the_handler_runs(query, pointers):
    ran: list[bool] = []

    async def handler(req):
        ran.append(True)
        return func.HttpResponse("ok")

    req = func.HttpRequest(method="GET", url=f"http://localhost/api/v1/x?{query}", headers={}, params={}, body=b"")
    response = await answer(handler, req, "/api/v1/x")
    assert response.status_code == 400 and not ran
    assert [e["pointer"] for e in json.loads(response.get_body())["errors"]] == pointers


async def test_distinct_query_parameters_reach_the_handler():
    async def handler(req):
        return func.HttpResponse("ok")

    req = func.HttpRequest(method="GET", url="http://localhost/api/v1/x?limit=2&continuationToken=a%26b", headers={},
                           params={}, body=b"")
    assert (await answer(handler, req, "/api/v1/x")).status_code == 200


@pytest.mark.parametrize(("url", "hsts"), [
    ("https://connections.contoso.example/api/v1/app-connections/options", True),
    ("https://func-x.azurewebsites.net/organization/app-connections", True),
    ("http://connections.contoso.example/auth/session", False),  # ignored over plain HTTP (RFC 6797 §8.1)
    ("https://localhost:7071/auth/session", False),  # a developer's machine: not every local port for a year
    ("https://127.0.0.1:8443/auth/session", False),
])
async def test_every_answer_over_https_tells_the_browser_to_use_https_only(url, hsts):
    from shared.functions.http import HSTS, traced

    @traced
    async def handler(req):
        return func.HttpResponse("ok")

    response = await handler(func.HttpRequest(method="GET", url=url, headers={}, params={}, body=b""))
    assert response.headers.get("Strict-Transport-Security") == (HSTS if hsts else None)
    assert not hsts or "max-age=31536000" in HSTS


async def test_a_request_is_served_with_a_deadline_no_retry_starts_past() -> None:
    """Every HTTP function answers through this wrapper (the test below): Azure's front end gives up on a request
    after 230 s, so none of its Azure calls starts a retry past ``ANSWER_WITHIN`` seconds."""
    from shared.azure.retry import ANSWER_WITHIN, past_deadline
    from shared.functions.http import traced

    seen: list[tuple[str | None, str | None]] = []

    @traced
    async def handler(req):
        seen.append((past_deadline(ANSWER_WITHIN - 5), past_deadline(ANSWER_WITHIN + 5)))
        return func.HttpResponse("ok")

    await handler(func.HttpRequest(method="GET", url="https://x.example/a", headers={}, params={}, body=b""))
    [(within, beyond)] = seen
    assert within is None and beyond is not None and "deadline" in beyond
    assert past_deadline(ANSWER_WITHIN + 5) is None  # after the request: none


def test_every_http_function_of_the_app_answers_through_the_span_that_adds_hsts():
    import subprocess
    import sys
    from pathlib import Path

    # In a process of its own: the app is indexed once per process (another test's host may have indexed it).
    script = """
import function_app
from shared.functions.http import _traced
wrapped = _traced(lambda req: req, lambda req: req).__code__
http = [f for f in function_app.app.get_functions() if f.get_trigger().get_binding_name() == "httpTrigger"]
print(len(http), sorted(f.get_function_name() for f in http if f.get_user_function().__code__ is not wrapped))
"""
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    count, unwrapped = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 20 and unwrapped == "[]"


def test_a_lone_surrogate_anywhere_in_the_body_is_a_400_and_a_surrogate_pair_is_text():
    for lone in (b'{"credentials": {"clientSecret": "abc\\ud800"}}', b'{"description": "\\uDC00x"}',
                 b'{"a": ["\\ud83d"]}'):
        with pytest.raises(InvalidRequest, match="lone surrogate"):
            read_json(request(lone))
    assert read_json(request(b'{"description": "\\ud83d\\ude00 \\u00e9"}')) == {"description": "\U0001F600 \u00e9"}


def test_a_field_that_is_not_unicode_text_is_refused_by_its_rule():
    from shared.fields import no_controls

    with pytest.raises(ValueError, match="lone surrogate"):
        no_controls("secret\ud800")
    assert no_controls("caf\u00e9 \U0001F600") == "caf\u00e9 \U0001F600"


def test_the_query_parameters_each_route_reads_are_those_its_openapi_operation_documents():
    import subprocess
    import sys
    from pathlib import Path

    script = """
import json
import function_app
documented = {}
for operations in json.load(open("shared/openapi.json"))["paths"].values():
    for operation in operations.values():
        if isinstance(operation, dict) and "operationId" in operation:
            documented[operation["operationId"]] = sorted(p["name"] for p in operation.get("parameters", [])
                                                          if p.get("in") == "query")
read = {f.get_function_name(): getattr(f.get_user_function(), "query_parameters", "unchecked")
        for f in function_app.app.get_functions()}
print(json.dumps({name: [sorted(q) if q not in (None, "unchecked") else q, documented.get(name)]
                  for name, q in read.items() if q != "unchecked"}))
"""
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    routes = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(routes) >= 15
    for name, (reads, documented) in routes.items():
        assert reads is None or reads == documented, name  # None: the route checks its query itself


@pytest.mark.parametrize(("given", "kept"), [
    ("3f2a-req.1:a", True), ("a" * 64, True),
    ("a" * 65, False), ("", False), ("id with spaces", False), ("x\r\ninjected: audit", False), ("é", False),
])
def test_the_request_id_in_an_audit_record_is_the_caller_s_only_when_it_is_a_short_plain_token(given, kept):
    from shared.functions.http import request_id

    req = func.HttpRequest(method="GET", url="http://localhost/api/v1/x", headers={"x-request-id": given},
                           params={}, body=b"")
    chosen = request_id(req)
    assert (chosen == given) is kept
    assert kept or (len(chosen) == 32 and chosen.isalnum())


async def test_a_duplicate_key_that_is_a_lone_surrogate_is_a_400_problem_not_a_500():
    """(Review D, session 17.) The duplicate-key check quoted the key in its problem, which could then not be
    written as UTF-8: the host answered 500, and the audit record of the create had no outcome."""

    async def handler(req):
        return read_json(req)

    response = await answer(handler, request(b'{"\\ud800": 1, "\\ud800": 2}'), "/api/v1/x")
    assert response.status_code == 400
    problem = json.loads(response.get_body().decode("utf-8"))
    assert problem["errors"][0]["detail"] == 'the key "\\ud800" appears more than once'


async def test_a_problem_quoting_text_that_is_not_unicode_is_still_written():
    async def handler(req):
        raise InvalidRequest("The name '\ud800' is refused.")

    response = await answer(handler, request(), "/api/v1/x")
    assert response.status_code == 400
    assert json.loads(response.get_body())["detail"] == "The name '\ud800' is refused."


class _Caller:
    def __init__(self, *roles: str) -> None:
        self.roles = frozenset(roles)

    async def validate(self, authorization: str) -> object:
        from shared.auth import Principal

        return Principal("oid-caller", "caller@contoso.example", "user", "t", self.roles)


def _wired(monkeypatch, *roles: str):  # type: ignore[no-untyped-def]
    from shared import wiring
    from shared.audit import AuditLog
    from tests.lifecycle_harness import Harness

    h = Harness()
    monkeypatch.setattr(wiring, "token_validator", lambda: _Caller(*roles))
    monkeypatch.setattr(wiring, "audit_log", lambda: AuditLog(h.fakes.audit, h.fakes.clock))
    monkeypatch.setattr(wiring, "connection_service", lambda: h.services().connections)
    return h


def _api_request(method: str, app: str, connection_id: str | None = None, body: object = None,
                 params: dict[str, str] | None = None) -> func.HttpRequest:
    route = {"app": app} | ({"connectionId": connection_id} if connection_id is not None else {})
    path = "/api/v1/app-connections/a" + ("/b" if connection_id is not None else "")
    query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
    return func.HttpRequest(method, f"https://svc.example{path}" + (f"?{query}" if query else ""),
                            headers={"authorization": "Bearer t", "content-type": "application/json"},
                            params=params or {}, route_params=route,
                            body=b"" if body is None else json.dumps(body).encode())


FORGED = "x\n2026-12-01T00:00:00Z connection.delete succeeded by admin\x1b[2K"


@pytest.mark.parametrize("roles", [(), ("AppConnections.Writer",)], ids=["refused", "audited"])
async def test_an_audit_record_takes_the_route_s_app_and_connection_id_only_as_they_are_known_or_escaped(
        monkeypatch, roles) -> None:
    """(Audit review 2.) Any caller signed in, with no role at all, wrote records whose app was the route's segment
    of any length and whose connectionId held a newline and an escape sequence (a forged second line)."""
    from shared.functions.connections import delete_app_connection, get_app_connection

    h = _wired(monkeypatch, *roles)
    handler = delete_app_connection if roles else get_app_connection
    await handler(_api_request("DELETE" if roles else "GET", "azure-key-vault" + "A" * 4000, FORGED))
    record = h.fakes.audit.records[0]
    assert record.action == ("connection.delete" if roles else "access.refused")
    assert record.app == "unknown:azure-key-vaultAAAAAAAAAAAAAAAAA..."
    assert record.connection_id == "x\\n2026-12-01T00:00:00Z connection.delet..."
    assert all(c.isprintable() for r in h.fakes.audit.records for c in f"{r.app}{r.connection_id}{r.detail}")
    known = "0B8B6A3C-5C4F-4B8E-9F55-3E1F1C9E7A10"
    await handler(_api_request("DELETE" if roles else "GET", "azure-key-vault", known))
    assert (h.fakes.audit.records[-1].app, h.fakes.audit.records[-1].connection_id) == ("azure-key-vault",
                                                                                      known.lower())
    for spelled in (f"{{{known}}}", f"urn:uuid:{known}", known.replace("-", "")):  # find nothing, name nothing
        await handler(_api_request("DELETE" if roles else "GET", "azure-key-vault", spelled))  # (review Z1)
        assert h.fakes.audit.records[-1].connection_id not in (known, known.lower())


@pytest.mark.parametrize("where", ["query", "path"])
async def test_a_refusal_quotes_the_app_the_caller_chose_escaped_in_its_message_and_its_record(
        monkeypatch, where) -> None:
    """(Review of the audit, 1.) The 403's message quoted the app as the caller sent it (cut at 80 characters only)
    and the ``access.refused`` record copies that message into its ``detail``: anyone signed in, with no role at
    all, wrote a forged line and a terminal escape into the record through the audit search's ``app`` or a
    URL-decoded ``{app}`` segment. Quoted as the record's ``app`` quotes it: escaped, and cut short."""
    from shared.functions.audit import list_audit_logs
    from shared.functions.connections import list_app_connections

    h = _wired(monkeypatch, "AppConnections.Auditor.azure-key-vault", "AppConnections.Reader.azure-key-vault")
    if where == "query":
        response = await list_audit_logs(func.HttpRequest(
            "GET", "https://svc.example/api/v1/audit-logs", headers={"authorization": "Bearer t"},
            params={"app": FORGED}, body=b""))
    else:
        response = await list_app_connections(_api_request("GET", FORGED))
    assert response.status_code == 403
    [refused] = h.fakes.audit.records
    assert refused.action == "access.refused"
    assert all(c.isprintable() for c in f"{refused.app}{refused.detail}"), refused.detail
    quoted = "x\\n2026-12-01T00:00:00Z connection.delete succeeded by admin\\x1b[2K"
    assert quoted in (refused.detail or "") and quoted in json.loads(response.get_body())["detail"]
    response = await list_app_connections(_api_request("GET", "x" * 4000))
    assert f".x{'x' * 79}...)" in (h.fakes.audit.records[-1].detail or "")  # cut short, as before


async def test_a_change_whose_handler_reads_no_body_records_none_of_it(monkeypatch) -> None:
    """A rotate's (or validate's) body is not read: it was summarized into the started record all the same, text
    the caller chose (review Z1)."""
    from shared.functions.rotation import rotate_app_connection
    from tests.lifecycle_harness import APP

    h = _wired(monkeypatch, "AppConnections.Admin")
    record = await h.create()
    seen = len(h.fakes.audit.records)
    await rotate_app_connection(_api_request("POST", APP, record.id, body={"name": "prod-payments"}))
    started = h.fakes.audit.records[seen]
    assert started.outcome == "started" and "prod-payments" not in (started.detail or "")


async def test_the_started_record_of_a_create_names_what_it_asks_for_and_no_secret(monkeypatch) -> None:
    """(Audit review 3.) A create's records said "POST <path>" only: a failed one (a wrong or stolen secret tried
    against some tenant's application) named neither tenant nor application."""
    from shared.functions.connections import create_app_connection
    from tests.lifecycle_harness import APP

    h = _wired(monkeypatch, "AppConnections.Admin")
    client_id, credentials = h.new_application()
    credentials["clientSecret"] = "wrong-secret-guess-1"
    body = {"name": "probe", "method": "client-secret", "credentials": credentials}
    response = await create_app_connection(_api_request("POST", APP, body=body))
    assert response.status_code == 400
    started, outcome = h.fakes.audit.records
    assert started.detail == (f"POST /api/v1/app-connections/a name='probe' method='client-secret' "
                              f"tenantId={credentials['tenantId']} clientId={client_id}")
    assert "wrong-secret-guess-1" not in f"{started}{outcome}"
    # A name or method that is not one (a secret pasted into the name: review Z1) is not written down.
    pasted = "Xy38Q~abcdefghijklmnopqrstuvwxyz0123456789AB"
    body = {"name": pasted, "method": "probe\nline", "credentials": credentials}
    await create_app_connection(_api_request("POST", APP, body=body))
    started = h.fakes.audit.records[-2]
    assert "name=(not a name) method=(not a method)" in (started.detail or "") and pasted not in f"{started}"


async def test_the_started_record_of_a_patch_names_the_fields_it_changes_and_no_secret(monkeypatch) -> None:
    """(Audit review 3.) A PATCH that pointed a connection at another application and turned its rotation off was
    recorded as one of its description was."""
    from shared.functions.connections import update_app_connection
    from tests.lifecycle_harness import APP

    h = _wired(monkeypatch, "AppConnections.Admin")
    record = await h.create()
    new_client, credentials = h.new_application()
    seen = len(h.fakes.audit.records)
    for body in ({"description": "harmless"}, {"credentials": credentials, "isAutoRotationEnabled": False},
                 {"rotation": None, "surprise": 1}, ["not", "an", "object"]):
        await update_app_connection(_api_request("PATCH", APP, record.id, body=body))
    started = [r.detail for r in h.fakes.audit.records[seen:] if r.action == "connection.update"
               and r.outcome == "started"]
    path = "PATCH /api/v1/app-connections/a/b"
    assert started == [
        f"{path} changes=description",
        f"{path} changes=credentials,isAutoRotationEnabled tenantId={credentials['tenantId']} clientId={new_client}"
        " rotation=off",
        f"{path} changes=rotation (+1 unknown)",
        path,
    ]
    assert not any(credentials["clientSecret"] in str(r) for r in h.fakes.audit.records)


async def test_a_key_id_alone_needs_writer_and_its_started_record_names_it_and_no_secret(monkeypatch) -> None:
    """``credentials: {clientSecretKeyId}`` alone on a PATCH (which of the application's secrets the connection holds,
    so which one a rotation revokes) is a statement about the credentials: Writer, as any change of credentials. The
    service checks it only by Graph's three-character hint, so a Rotator's word would pick, among secrets sharing a
    hint, which one is revoked (review of this session's changes). Its started record names the Key ID as it names
    the tenant and client IDs (a GUID, else "(not a GUID)")."""
    from shared.functions.connections import update_app_connection
    from tests.lifecycle_harness import APP

    h = _wired(monkeypatch, "AppConnections.Rotator")
    client_id, given = h.new_app()
    record = await h.api.create(APP, {"name": "c", "method": "client-secret",
                                      "credentials": h.credentials(client_id, given)})
    for body in ({"credentials": {"clientSecretKeyId": given.key_id}},
                 {"credentials": {"clientSecretKeyId": given.key_id}, "isAutoRotationEnabled": True},
                 {"credentials": {**h.credentials(client_id, given), "clientSecretKeyId": given.key_id}}):
        refused = await update_app_connection(_api_request("PATCH", APP, record.id, body=body))
        assert refused.status_code == 403, body
        assert json.loads(refused.get_body())["requiredRole"] == "AppConnections.Writer"
    h = _wired(monkeypatch, "AppConnections.Writer")
    client_id, given = h.new_app()
    record = await h.api.create(APP, {"name": "c", "method": "client-secret",
                                      "credentials": h.credentials(client_id, given)})
    seen = len(h.fakes.audit.records)
    named = await update_app_connection(_api_request("PATCH", APP, record.id, body={
        "credentials": {"clientSecretKeyId": given.key_id}}))
    assert named.status_code == 200, named.get_body()
    assert json.loads(named.get_body())["appConnection"]["version"] == 2
    pasted = await update_app_connection(_api_request("PATCH", APP, record.id, body={
        "credentials": {"clientSecretKeyId": given.secret}}))  # the secret in the wrong field
    assert pasted.status_code == 400 and given.secret not in pasted.get_body().decode()
    started = [r.detail for r in h.fakes.audit.records[seen:] if r.outcome == "started"]
    path = "PATCH /api/v1/app-connections/a/b"
    assert started == [f"{path} changes=credentials clientSecretKeyId={given.key_id}",
                       f"{path} changes=credentials clientSecretKeyId=(not a GUID)"]
    assert not any(given.secret in str(r) for r in h.fakes.audit.records)


async def test_the_started_record_of_a_forced_delete_says_force(monkeypatch) -> None:
    """(Audit review 1.) The query string was cut from the started record: nothing said a DELETE was forced."""
    from shared.functions.connections import delete_app_connection
    from tests.lifecycle_harness import APP

    h = _wired(monkeypatch, "AppConnections.Writer")
    for force in ("true", "false"):
        record = await h.create(name=f"c-{force}")
        seen = len(h.fakes.audit.records)
        await delete_app_connection(_api_request("DELETE", APP, record.id, params={"force": force}))
        started = h.fakes.audit.records[seen]
        assert (started.action, started.outcome) == ("connection.delete", "started")
        assert started.detail == "DELETE /api/v1/app-connections/a/b" + (" force=true" if force == "true" else "")


@pytest.mark.parametrize(("status_line", "header", "wait"), [
    (b"HTTP/1.1 503 Server Busy", b"Retry-After: 120", "120"),
    (b"HTTP/1.1 429 Too Many Requests", b"X-Ms-Retry-After-Ms: 90000", "90")])
async def test_an_sdk_call_still_throttled_when_the_retries_run_out_is_a_503_with_retry_after(
        status_line, header, wait):
    """(Review FC 1.) An Azure SDK call (the Tables SDK, over HTTP) still answered 429/503 when its retries ran out
    is a 503 problem whose ``Retry-After`` is the service's last wait, not a 502 without one; other failures
    stay 502 (above)."""
    import asyncio

    from shared.azure.clients import AzureClients
    from shared.settings import load_settings
    from tests.loopback_table import connection_string

    async def busy(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                await reader.readexactly(int(length[0].split(b":")[1]) if length else 0)
                writer.write(b"\r\n".join([status_line, header, b"Content-Length: 0", b"", b""]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = AzureClients(load_settings({"AzureWebJobsStorage": connection_string(port)}))

    async def handler(req):
        await clients.table("Throttled")

    try:
        response = await asyncio.wait_for(answer(handler, request(), "/api/v1/x"), 120)
    finally:
        await clients.close()
        server.close()
    assert response.status_code == 503, response.get_body()
    assert response.headers.get("Retry-After") == wait
    assert json.loads(response.get_body())["type"].endswith("upstream-throttled")


async def test_a_handler_that_raises_leaves_a_server_span_saying_500(exporter) -> None:  # type: ignore[no-untyped-def]
    """(Review of telemetry, 7.) The worker answers 500; the span said nothing of a status code."""
    from shared.functions.http import traced

    @traced
    async def handler(req):
        raise KeyError("a defect")

    with pytest.raises(KeyError):
        await handler(func.HttpRequest(method="GET", url="https://x.example/a", headers={}, params={}, body=b""))
    [span] = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert span.attributes["http.response.status_code"] == 500 and span.status.status_code.name == "ERROR"


@pytest.mark.parametrize("method", ["PATCH", "POST"])
def test_a_json_patch_document_is_refused_as_an_unsupported_media_type(method):
    """RFC 5789 2.2: its type ends in +json, but a JSON Patch (RFC 6902: an array of operations) is not a body any
    route takes: 415, not the 400 of a body that is no object. A PATCH's says which patch formats it takes."""
    req = func.HttpRequest(method=method, url="http://localhost/api/v1/x", params={},
                           body=b'[{"op": "replace", "path": "/description", "value": "x"}]',
                           headers={"content-type": "application/json-patch+json"})
    with pytest.raises(UnsupportedMediaType) as refused:
        read_json(req)
    accept_patch = {"Accept-Patch": "application/json, application/merge-patch+json"}
    assert refused.value.headers == (accept_patch if method == "PATCH" else {})


def test_a_patch_of_another_type_says_which_patch_formats_it_takes():
    req = func.HttpRequest(method="PATCH", url="http://localhost/api/v1/x", params={}, body=b"{}",
                           headers={"content-type": "text/plain"})
    with pytest.raises(UnsupportedMediaType, match="merge-patch") as refused:
        read_json(req)
    assert refused.value.headers["Accept-Patch"] == "application/json, application/merge-patch+json"
    merge = func.HttpRequest(method="PATCH", url="http://localhost/api/v1/x", params={}, body=b"{}",
                             headers={"content-type": "application/merge-patch+json"})
    assert read_json(merge) == {}
