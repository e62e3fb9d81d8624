"""The OpenAPI document is generated from the models, covers every route, and the models match what the
service's own functions produce (``to_response``, ``state_response``, ``as_dict``, ``app_options``, problems).
The route serves the checked-in ``shared/openapi.json``, which must be what the models generate, deployed, and
served without importing pydantic (a cold process)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.connections import to_response
from shared.errors import Conflict, FieldError, InvalidRequest, NotFound, RotationInProgress
from shared.models import (
    AppOptionOut,
    ConnectionEnvelope,
    ConnectionOut,
    CreateConnectionIn,
    DeletedOut,
    Problem,
    RotationEventOut,
    UpdateConnectionIn,
)
from shared.openapi import DOCUMENT_FILE, REGENERATE, openapi_document, rendered
from shared.records import ConnectionRecord, RotationEvent, RotationState

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
ROUTES = {
    ("get", "/api/v1/app-connections/options"), ("post", "/api/v1/app-connections/{app}"),
    ("get", "/api/v1/app-connections/{app}"), ("get", "/api/v1/app-connections/{app}/{connectionId}"),
    ("get", "/api/v1/app-connections/{app}/connection-name/{connectionName}"),
    ("patch", "/api/v1/app-connections/{app}/{connectionId}"),
    ("delete", "/api/v1/app-connections/{app}/{connectionId}"),
    ("post", "/api/v1/app-connections/{app}/{connectionId}/validate"),
    ("post", "/api/v1/app-connections/{app}/{connectionId}/rotate"),
    ("post", "/api/v1/app-connections/{app}/{connectionId}/migrate-to-federated"),
    ("get", "/api/v1/app-connections/{app}/{connectionId}/rotations"),
    ("get", "/api/v1/app-connections/azure-client-secrets/{connectionId}/clients"),
    ("get", "/api/v1/app-connections/{app}/oauth/authorize"),
    ("get", "/organization/app-connections/azure/oauth/callback"), ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/audit-logs"),
    ("get", "/api/v1/app-connections/health"), ("post", "/api/v1/app-connections/{app}/{connectionId}/health"),
}


def _record(**changes: object) -> ConnectionRecord:
    record = ConnectionRecord(
        app="azure-key-vault", id="6f1c1f4e-0000-4000-8000-000000000001", name="prod", method="client-secret",
        tenant_id="t", client_id="c", created_at=NOW, updated_at=NOW, secret_name="s", secret_version="v",
    )
    return record.evolve(**changes)


def test_every_route_is_documented_with_its_problems_and_the_bearer_token():
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    found = {(m, p) for p, item in document["paths"].items() for m in item if m != "parameters"}
    assert found == ROUTES
    schemes = document["components"]["securitySchemes"]
    assert schemes == {"entraId": {**schemes["entraId"], "type": "http", "scheme": "bearer"}}
    assert document["security"] == [{"entraId": []}]
    callback = document["paths"]["/organization/app-connections/azure/oauth/callback"]["get"]
    assert callback["security"] == [] and "text/html" in callback["responses"]["200"]["content"]
    create = document["paths"]["/api/v1/app-connections/{app}"]["post"]
    for status in ("201", "400", "401", "403", "404", "409", "413", "415", "502", "503"):
        assert status in create["responses"]
    assert "application/problem+json" in create["responses"]["409"]["content"]


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): operation for path, item in openapi_document()["paths"].items()
            for method, operation in item.items() if method != "parameters"}


def test_each_operation_documents_the_problems_it_answers():
    """(Review FB 2, 3, 5.) A connection being deleted is a 409 on its health check and its clients too; the
    console session's store failing is a 502 on every route that takes a session (the options, this document);
    ``POST …/options`` and ``POST …/health`` reach the create route and answer 405."""
    operations = _operations()
    base = "/api/v1/app-connections"
    assert "409" in operations[("post", base + "/{app}/{connectionId}/health")]["responses"]
    assert "409" in operations[("get", base + "/azure-client-secrets/{connectionId}/clients")]["responses"]
    for key, operation in operations.items():
        if operation.get("security") != []:
            assert "502" in operation["responses"], key
    assert "405" in operations[("post", base + "/{app}")]["responses"]


def test_the_headers_of_the_problems_are_declared():
    """(Review FB 4.) Every 412 carries the current ``ETag``, a 405 ``Allow``; a 401 to a token (not to a console
    session) ``WWW-Authenticate``, and the 409 of an operation that waits for a rotation in progress
    ``Retry-After``."""
    operations = _operations()
    for key, operation in operations.items():
        for status, header, always in (("401", "WWW-Authenticate", False), ("412", "ETag", True),
                                       ("405", "Allow", True)):
            if status in operation["responses"]:
                assert operation["responses"][status]["headers"][header]["required"] is always, (key, status)
    item = "/api/v1/app-connections/{app}/{connectionId}"
    waits = (("patch", item), ("delete", item), ("post", item + "/rotate"), ("post", item + "/migrate-to-federated"))
    for key in waits:
        assert operations[key]["responses"]["409"]["headers"]["Retry-After"]["required"] is False, key
    assert "headers" not in operations[("post", item + "/validate")]["responses"]["409"]


def test_only_the_operations_that_read_a_body_document_413_and_415():
    """(Review FB 6.) A route that reads no body does not refuse one for its size or type."""
    for key, operation in _operations().items():
        reads_a_body = "requestBody" in operation
        assert ("413" in operation["responses"]) is reads_a_body, key
        assert ("415" in operation["responses"]) is reads_a_body, key


def test_closed_sets_and_formats_are_said_in_the_schemas():
    """(Review FB, smaller.) Statuses are enums, ``rotateAt`` has its pattern (the one ``parse_hhmm`` applies), and
    ``applicationsNotRead``, always answered, is required."""
    import re

    from shared.records import CONNECTION_STATUSES, HEALTH_STATUSES, ROTATION_STATUSES
    from shared.rotation.schedule import ScheduleError, parse_hhmm

    schemas = openapi_document()["components"]["schemas"]
    assert schemas["ConnectionOut"]["properties"]["status"]["enum"] == list(CONNECTION_STATUSES)
    assert schemas["HealthOut"]["properties"]["status"]["enum"] == list(HEALTH_STATUSES)
    [given, _] = schemas["RotationOut"]["properties"]["status"]["anyOf"]
    assert given["enum"] == list(ROTATION_STATUSES)
    assert "applicationsNotRead" in schemas["DeletedOut"]["required"]
    [time_of_day, _] = schemas["RotationIn"]["properties"]["rotateAt"]["anyOf"]
    pattern = re.compile(time_of_day["pattern"])
    for value in ("00:00", "03:30", "23:59", "24:00", "3:30", "03:60", "0\u0663:30", "03:30:00"):
        try:
            parse_hhmm(value)
            taken = True
        except ScheduleError:
            taken = False
        assert bool(pattern.search(value)) is taken, value
    with pytest.raises(ScheduleError):
        parse_hhmm("0\u0663:30")  # an Arabic-Indic digit three: ``\\d`` took it


def test_the_schemas_are_the_models():
    schemas = openapi_document()["components"]["schemas"]
    generated = CreateConnectionIn.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["RotationIn"] == generated["$defs"]["RotationIn"]
    mine = dict(schemas["CreateConnectionIn"])
    mine["properties"] = {**mine["properties"], "credentials": generated["properties"]["credentials"]}
    assert mine == {k: v for k, v in generated.items() if k != "$defs"}
    assert schemas["UpdateConnectionIn"]["additionalProperties"] is False
    assert set(schemas["UpdateConnectionIn"]["properties"]) == set(UpdateConnectionIn.model_fields)
    assert set(schemas["ConnectionOut"]["required"]) == set(ConnectionOut.model_fields)
    assert schemas["ConnectionOut"]["additionalProperties"] is False


def test_a_patch_s_credentials_may_be_the_key_id_alone_and_the_document_says_so():
    """A PATCH takes ``credentials: {clientSecretKeyId}`` alone on a client-secret connection: the document has its
    model, and the PATCH body's ``credentials`` names it (a create's does not: it always needs the secret)."""
    from shared.models import ClientSecretKeyIdIn

    schemas = openapi_document()["components"]["schemas"]
    generated = ClientSecretKeyIdIn.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["ClientSecretKeyIdIn"] == generated
    assert generated["required"] == ["clientSecretKeyId"] and generated["additionalProperties"] is False
    assert "ClientSecretKeyIdIn" in schemas["UpdateConnectionIn"]["properties"]["credentials"]["description"]
    assert "ClientSecretKeyIdIn" not in schemas["CreateConnectionIn"]["properties"]["credentials"]["description"]


def test_connections_as_answered_match_the_response_model():
    plain = to_response(_record())
    ConnectionEnvelope.model_validate({"appConnection": plain})
    state = RotationState(enabled=True, interval_days=30, rotate_at="03:00", time_zone="Europe/Paris",
                          status="scheduled", last_rotated_at=NOW, next_at=NOW + timedelta(days=30))
    rotated = to_response(_record(rotation=state))
    assert rotated["rotation"] is not None
    ConnectionOut.model_validate(rotated)
    rotating = to_response(_record(rotation=state.evolve(status="rotating", rotation_id="r1", step="created")))
    assert rotating["rotation"]["rotationId"] == "r1"
    ConnectionOut.model_validate(rotating)
    oauth = to_response(_record(method="oauth", client_id=None, status="reauthorization-required"))
    assert "clientId" not in oauth["credentials"]
    ConnectionOut.model_validate(oauth)
    with pytest.raises(ValueError, match="secret"):
        ConnectionOut.model_validate({**plain, "secret": "x"})


def test_deletions_as_answered_match_the_response_model():
    answer = {"appConnection": to_response(_record()), "removedKeyIds": ["k1"], "keyIdsLeftLive": [],
              "applicationsNotRead": []}
    DeletedOut.model_validate(answer)
    for always in ("keyIdsLeftLive", "applicationsNotRead"):  # the route answers both, empty or not
        with pytest.raises(ValueError, match=always):
            DeletedOut.model_validate({k: v for k, v in answer.items() if k != always})
    delete = openapi_document()["paths"]["/api/v1/app-connections/{app}/{connectionId}"]["delete"]
    assert delete["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeletedOut"}
    assert [p["name"] for p in delete["parameters"]] == ["If-Match", "force"]


def test_rotation_events_and_options_match_their_models():
    event = RotationEvent("r", 1, "c", "azure-key-vault", NOW, NOW + timedelta(seconds=2), "succeeded", "manual",
                          "k2", "k1", None)
    RotationEventOut.model_validate(event.as_dict())
    assert event.as_dict()["durationMs"] == 2000
    running = RotationEvent("r", 2, "c", "azure-key-vault", NOW, None, "running", "resume")
    shown = RotationEventOut.model_validate(running.as_dict())
    assert (shown.attempt, shown.finishedAt, shown.durationMs) == (2, None, None)
    from shared.options import app_options
    from shared.settings import load_settings

    settings = load_settings({"KEY_VAULT_URL": "https://v.vault.azure.net",
                              "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                              "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
                              "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "oauth-client-secret"})
    options = app_options(settings)
    assert {o["oauthConfigured"] for o in options} == {True, False}
    for option in options:
        AppOptionOut.model_validate(option)


@pytest.mark.parametrize("error", [
    InvalidRequest("bad", errors=[FieldError("/name", "is required")]), NotFound("no"),
    Conflict("taken", extensions={"aadstsCode": "AADSTS7000215"}),
    RotationInProgress("busy", headers={"Retry-After": "5"}, extensions={"rotationId": "r", "retryAfterSeconds": 5}),
])
def test_problems_match_the_problem_model(error):
    Problem.model_validate(error.to_problem("/api/v1/x"))


def _response(status: int, request: httpx.Request, **kwargs: object) -> httpx.Response:
    response = httpx.Response(status, request=request, **kwargs)  # type: ignore[arg-type]
    response.read()
    response.elapsed = timedelta(milliseconds=1)
    return response


def test_the_conformance_check_catches_a_wrong_answer():
    from tests.reliability.conftest import Conformance

    conformance = Conformance(openapi_document())
    path = "/api/v1/app-connections/{app}/{connectionId}"
    request = httpx.Request("GET", "http://h/api/v1/app-connections/azure-key-vault/x")
    good = _response(200, request, json={"appConnection": to_response(_record())}, headers={"ETag": '"1"'})
    conformance.check("get", path, good)
    with pytest.raises(AssertionError, match="no ETag"):  # a header the document requires
        conformance.check("get", path, _response(200, request, json={"appConnection": to_response(_record())}))
    bad = _response(200, request, json={"appConnection": {**to_response(_record()), "clientSecret": "x"}},
                    headers={"ETag": '"1"'})
    with pytest.raises(Exception):  # schemathesis' failure group
        conformance.check("get", path, bad)
    with pytest.raises(AssertionError):
        conformance.check("get", path, _response(500, request, json={}))
    with pytest.raises(AssertionError):
        conformance.check("get", path, _response(404, request, content=b"<p>", headers={"content-type": "text/html"}))
    assert json.dumps(openapi_document())  # serializable


def test_the_checked_in_document_is_the_one_the_models_generate():
    assert DOCUMENT_FILE == ROOT / "shared" / "openapi.json"
    checked_in = DOCUMENT_FILE.read_text(encoding="utf-8") if DOCUMENT_FILE.is_file() else "(missing)"
    assert checked_in == rendered(), f"shared/openapi.json is out of date: regenerate it with `{REGENERATE}`"
    assert json.loads(checked_in) == openapi_document()


def _funcignore_lines_matching(path: str) -> list[str]:
    """The lines of .funcignore (gitignore syntax, as the deployment reads it) that exclude ``path``."""
    from localdev import package

    return package.ignored_by(path, package.ignore_patterns(ROOT))


def test_the_document_is_deployed():
    assert _funcignore_lines_matching("shared/openapi.json") == []
    assert _funcignore_lines_matching("shared/functions/openapi.py") == []
    assert _funcignore_lines_matching("tests/shared/test_openapi.py") == ["tests"]  # the check can fail
    assert _funcignore_lines_matching("shared/__pycache__/openapi.cpython-311.pyc") == []  # shipped compiled


SERVE_IN_A_FRESH_PROCESS = """
import asyncio, json, sys
import azure.functions as func
import function_app

handler = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}[
    "get_openapi_document"].__wrapped__  # the handler itself: the access check is every route's (test_views)
request = func.HttpRequest("GET", "http://localhost/api/v1/openapi.json", headers={}, body=b"")
response = asyncio.run(handler(request))
again = asyncio.run(handler(request))
print(json.dumps({"status": response.status_code, "mimetype": response.mimetype, "charset": response.charset,
                  "headers": dict(response.headers), "body": response.get_body().decode("utf-8"),
                  "same": again.get_body() == response.get_body(), "modules": sorted(sys.modules)}))
"""
GENERATOR_ONLY = ["pydantic", "shared.models", "shared.openapi", "shared.oauth", "shared.connections"]


def test_the_route_serves_the_document_without_importing_pydantic_or_the_models():
    out = subprocess.run([sys.executable, "-c", SERVE_IN_A_FRESH_PROCESS], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    served = json.loads(out.stdout)
    assert [name for name in GENERATOR_ONLY if name in served["modules"]] == []
    assert (served["status"], served["mimetype"], served["charset"]) == (200, "application/json", "utf-8")
    assert served["headers"]["Cache-Control"] == "no-store"
    assert json.loads(served["body"]) == openapi_document()
    assert served["same"]


def test_every_operation_on_one_connection_that_changes_it_takes_if_match_and_documents_its_412():
    """RFC 9110 13.1.1: a PATCH, a DELETE, a validation, a health check, a rotation and a migration evaluate
    ``If-Match`` (412 with the current ETag); the reads do not take it."""
    item = "/api/v1/app-connections/{app}/{connectionId}"
    operations = _operations()
    conditional = {("patch", item), ("delete", item), ("post", item + "/validate"), ("post", item + "/health"),
                   ("post", item + "/rotate"), ("post", item + "/migrate-to-federated")}
    for key, operation in operations.items():
        takes = any(p.get("name") == "If-Match" and p["in"] == "header" for p in operation.get("parameters", []))
        assert takes is (key in conditional), key
        assert ("412" in operation["responses"]) is (key in conditional), key


def test_every_problem_type_the_service_answers_is_named_in_the_document_with_its_status():
    """RFC 9457 3.1.1: a client keys its handling on ``type``, so the document names every one (a ``ServiceError``
    subclass of any module of the service), with its status and title, in ``x-problem-types`` of the Problem
    schema; the 409 says what ``credentials-not-removed`` carries and how a DELETE ends it anyway."""
    import importlib
    import pkgutil

    import shared
    from shared.errors import PROBLEM_TYPE_BASE, ServiceError

    for module in pkgutil.walk_packages(shared.__path__, "shared."):
        importlib.import_module(module.name)

    def below(cls: type[ServiceError]) -> list[type[ServiceError]]:
        return [found for sub in cls.__subclasses__() for found in (sub, *below(sub))]

    document = openapi_document()
    catalogue = document["components"]["schemas"]["Problem"]["x-problem-types"]
    for cls in (ServiceError, *below(ServiceError)):
        named = catalogue.get(PROBLEM_TYPE_BASE + cls.slug)
        assert named is not None, cls
        assert named["status"] == cls.status or cls.slug == cls.__mro__[1].slug, cls  # (a subclass of its own type)
    delete_409 = document["paths"]["/api/v1/app-connections/{app}/{connectionId}"]["delete"]["responses"]["409"]
    for said in ("credentials-not-removed", "keyIds", "Retry-After", "?force=true", "rotation-in-progress",
                 "retryAfterSeconds"):
        assert said in delete_409["description"], said


def test_the_closed_sets_of_the_answers_are_enumerated_without_changing_the_answers():
    """A generated client gets an enum for a connection's ``method`` and ``app`` (as for the create's method and the
    path's app), and a rotation entry's ``trigger``; the schemas only say so (the read path builds its answers
    without pydantic, and they validate against the models as before)."""
    from shared.apps import APPS, Method
    from shared.records import TRIGGERS

    schemas = openapi_document()["components"]["schemas"]
    for model in ("ConnectionOut", "AttentionOut"):
        assert schemas[model]["properties"]["method"]["enum"] == [m.value for m in Method], model
        assert schemas[model]["properties"]["app"]["enum"] == sorted(APPS), model
    assert schemas["AppOptionOut"]["properties"]["app"]["enum"] == sorted(APPS)
    assert schemas["RotationEventOut"]["properties"]["trigger"]["enum"] == list(TRIGGERS)
    ConnectionOut.model_validate(to_response(_record()))


def test_the_415s_say_which_patch_formats_and_codings_are_taken():
    patch = _operations()[("patch", "/api/v1/app-connections/{app}/{connectionId}")]["responses"]["415"]
    assert set(patch["headers"]) == {"Accept-Patch", "Accept-Encoding"}
    assert "JSON Patch" in patch["description"]
