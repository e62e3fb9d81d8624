"""Schemathesis drives the OpenAPI document the service serves against the local host: at least 2,000
generated requests (valid and invalid by the document) across every route. Every answer must be below 500,
every error an ``application/problem+json`` problem, and every answer must conform to the document (status
code, content type, headers, body schema). The counts go to ``.reliability/fuzz.json``.

The run is derandomized (the same requests every time) and bounded: a fixed number of examples per route
and mode, no shrinking, no example database.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.models import Problem
from tests.reliability.harness import write_figures

pytestmark = pytest.mark.e2e

MIN_REQUESTS = 2000
TARGET_REQUESTS = 2000  # generated at random ids, plus the pinned ones
PINNED_EXAMPLES = 30
CALLBACK = "/organization/app-connections/azure/oauth/callback"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def _problem_failure(path: str, response: Any) -> str | None:
    """Why an error answer is not a proper problem document (``None`` when it is)."""
    if response.status_code < 400 or path == CALLBACK:
        return None
    content_type = response.headers.get("content-type", "")
    if isinstance(content_type, list):
        content_type = content_type[0]
    if not content_type.startswith("application/problem+json"):
        return f"content type {content_type!r}"
    try:
        Problem.model_validate(json.loads(response.content))
    except ValueError as error:
        return f"not a problem document: {str(error)[:200]}"
    return None


def _refused_by_the_http_server(response: Any) -> bool:
    """The local HTTP server's own answer to a request it could not parse (a negative case's malformed header,
    ``Transfer-Encoding: %``): it never reached the function app, and in Azure the platform's front end answers
    such a request. Anything else, however wrong, is the service's answer and is checked."""
    content_type = response.headers.get("content-type", "")
    if isinstance(content_type, list):  # schemathesis gives every header as a list of its values
        content_type = content_type[0] if content_type else ""
    return (response.status_code == 400 and str(content_type).startswith("text/plain")
            and response.content.strip() == b"Invalid HTTP request received.")


def _real_connection(api: Any, admin: Any, secrets_used: Any, local_env: Any) -> str:
    """A rotatable client-secret connection; its app is in the managed identity's tenant, so that the pinned
    migrate-to-federated can succeed."""
    from tests.e2e.entra import identity_tenant, register_rotatable_app

    entra = register_rotatable_app(admin, secrets_used, name="fuzzed", tenant_id=identity_tenant(local_env))
    body = {"name": f"fuzzed-{uuid.uuid4().hex[:8]}", "method": "client-secret",
            "credentials": entra.client_secret_body()}
    created = api.post("/api/v1/app-connections/azure-client-secrets", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["appConnection"]["id"])


def test_fuzz_every_route_with_generated_requests(host_url: str, openapi_document: dict[str, Any], api: Any,
                                                  admin: Any, secrets_used: Any, tokens: Any, local_env: Any) -> None:
    schema = schemathesis.openapi.from_dict(openapi_document)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    assert len(paths) == sum(len([m for m in item if m != "parameters"]) for item in openapi_document["paths"].values())
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    per_run = math.ceil(TARGET_REQUESTS / (len(operations) * len(modes)))  # 72 with 14 routes

    authorization = {"Authorization": f"Bearer {tokens.for_roles('AppConnections.Admin')}"}
    sent: Counter[str] = Counter()
    refused_by_server: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started = time.monotonic()

    def runner(operation: Any, mode: GenerationMode, pinned: dict[str, str] | None = None,
               examples: int = per_run) -> Any:
        label = f"{operation.method.upper()} {operation.path}"
        kind = "pinned" if pinned else mode.value
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False)
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            case = data.draw(strategy)
            # As an administrator: a request without a token only ever meets the 401 (test_access covers those).
            response = case.call(base_url=host_url, timeout=30, headers=authorization)
            if _refused_by_the_http_server(response):  # malformed HTTP (a negative header): never reached the app
                refused_by_server[label] += 1
                return
            sent[label] += 1
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as error:  # schemathesis' FailureGroup is a BaseExceptionGroup
                # A check failed: keep going, report them all at the end.
                failures.append(f"{label} [{kind}] -> {response.status_code}: {str(error)[:600]}")
            why = _problem_failure(operation.path, response)
            if why:
                failures.append(f"{label} [{kind}] -> {response.status_code}: {why}")

        return run

    for operation in operations:
        for mode in modes:
            runner(operation, mode)()
    # Random ids only ever reach "not found": also aim valid-by-the-document requests at a real connection
    # (rotatable, so rotate, clients and rotation settings do real work).
    random_ids_seconds = time.monotonic() - started
    pinned_before = sum(sent.values())
    cid = _real_connection(api, admin, secrets_used, local_env)
    for operation in operations:
        parameters = {p.name for p in operation.path_parameters}
        if "connectionId" in parameters and operation.method.upper() != "DELETE":
            pinned = {"connectionId": cid, **({"app": "azure-client-secrets"} if "app" in parameters else {})}
            runner(operation, GenerationMode.POSITIVE, pinned, PINNED_EXAMPLES)()

    elapsed = time.monotonic() - started
    total = sum(sent.values())
    server_errors = sum(count for status, count in statuses.items() if status >= 500)
    figures = {
        "requests": total,
        "server_errors": server_errors,
        "nonconforming": len(failures),
        "routes": len(sent),
        "pinned_requests": total - pinned_before,
        "seconds_random_ids": round(random_ids_seconds, 1),
        "seconds": round(elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_route": dict(sorted(sent.items())),
        "refused_by_the_http_server": dict(sorted(refused_by_server.items())),
        "schemathesis": schemathesis.SCHEMATHESIS_VERSION if hasattr(schemathesis, "SCHEMATHESIS_VERSION") else "",
    }
    path = write_figures("fuzz", figures)
    print(f"\nfuzz: {total} requests across {len(sent)} routes in {elapsed:.0f} s; 5xx: {server_errors}; "
          f"nonconforming: {len(failures)}; statuses {figures['statuses']} -> {path}")
    assert len(sent) == len(operations)
    assert total >= MIN_REQUESTS
    assert server_errors == 0, failures[:20]
    assert failures == [], failures[:20]


def test_a_walk_through_every_route_answers_as_documented(api, admin, secrets_used, conformance, local_env) -> None:
    """The successful answers fuzzing cannot reach (it has no working credentials): one connection taken
    through every route, and the usual failures, each checked against the document (its app in the managed
    identity's tenant: it migrates to federated)."""
    from tests.e2e.entra import identity_tenant, register_rotatable_app

    base = "/api/v1/app-connections"
    one, item = f"{base}/{{app}}", f"{base}/{{app}}/{{connectionId}}"
    check = conformance.check
    entra = register_rotatable_app(admin, secrets_used, name="walk", tenant_id=identity_tenant(local_env))
    name = f"walk-{uuid.uuid4().hex[:8]}"
    app = "azure-client-secrets"

    check("get", f"{base}/options", api.get(f"{base}/options"))
    check("get", "/api/v1/openapi.json", api.get("/api/v1/openapi.json"))
    body = {"name": name, "method": "client-secret", "credentials": entra.client_secret_body()}
    created = check("post", one, api.post(f"{base}/{app}", json=body))
    assert created.status_code == 201, created.text
    cid = created.json()["appConnection"]["id"]
    assert check("post", one, api.post(f"{base}/{app}", json=body)).status_code == 409
    read = check("get", item, api.get(f"{base}/{app}/{cid}"))
    assert read.status_code == 200 and read.headers["etag"] == f'"{read.json()["appConnection"]["version"]}"'
    stale = check("patch", item, api.patch(f"{base}/{app}/{cid}", json={"description": "lost"},
                                           headers={"If-Match": '"0"'}))
    assert stale.status_code == 412 and stale.headers["etag"] == read.headers["etag"], stale.text
    assert check("get", f"{base}/{{app}}/connection-name/{{connectionName}}",
                 api.get(f"{base}/{app}/connection-name/{name}")).status_code == 200
    assert check("get", one, api.get(f"{base}/{app}", params={"limit": 2})).status_code == 200
    assert check("patch", item, api.patch(f"{base}/{app}/{cid}", json={"description": "walk"},
                                          headers={"If-Match": read.headers["etag"]})).status_code == 200
    assert check("post", f"{item}/validate", api.post(f"{base}/{app}/{cid}/validate")).status_code == 200
    rotation = {"isAutoRotationEnabled": True,
                "rotation": {"rotationInterval": 30, "rotateAt": "03:00", "timeZone": "Europe/Paris"}}
    enabled = check("patch", item, api.patch(f"{base}/{app}/{cid}", json=rotation))
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["appConnection"]["rotation"]["enabled"] is True
    assert check("post", f"{item}/rotate", api.post(f"{base}/{app}/{cid}/rotate")).status_code == 200
    history = check("get", f"{item}/rotations", api.get(f"{base}/{app}/{cid}/rotations"))
    assert history.status_code == 200 and history.json()["rotations"]
    checked = check("post", f"{item}/health", api.post(f"{base}/{app}/{cid}/health"))
    assert checked.status_code == 200 and checked.json()["appConnection"]["health"]["status"] == "healthy"
    assert check("get", f"{base}/health", api.get(f"{base}/health")).status_code == 200
    clients = check("get", f"{base}/azure-client-secrets/{{connectionId}}/clients",
                    api.get(f"{base}/azure-client-secrets/{cid}/clients"))
    assert clients.status_code == 200, clients.text
    authorize = f"{one}/oauth/authorize"
    assert check("get", authorize, api.get(f"{base}/{app}/oauth/authorize", params={"name": name + "-o"},
                                           headers={"accept": "application/json"})).status_code == 200
    assert check("get", authorize, api.get(f"{base}/{app}/oauth/authorize",
                                           params={"name": name + "-o"})).status_code == 302
    # Failures.
    assert check("get", item, api.get(f"{base}/{app}/{uuid.uuid4()}")).status_code == 404
    assert check("get", item, api.get(f"{base}/no-such-app/{cid}")).status_code == 404
    assert check("post", one, api.post(f"{base}/{app}", json={"name": "Bad Name"})).status_code == 400
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert check("post", one, api.post(f"{base}/{app}", content=b"name=x", headers=form)).status_code == 415
    assert check("post", one, api.post(f"{base}/{app}", json={"name": "x" * 70_000})).status_code == 413
    assert check("get", one, api.get(f"{base}/{app}", params={"limit": 0})).status_code == 400
    callback = "/organization/app-connections/azure/oauth/callback"
    assert check("get", callback, api.get(callback, params={"state": "x" * 20, "code": "y"})).status_code == 400
    extra = {"state": "s", "code": "c", "extra": "1"}
    assert check("get", callback, api.get(callback, params=extra)).status_code == 400
    migrate = f"{item}/migrate-to-federated"
    assert check("post", migrate, api.post(f"{base}/{app}/{uuid.uuid4()}/migrate-to-federated",
                                           json={})).status_code == 404
    moved = check("post", migrate, api.post(f"{base}/{app}/{cid}/migrate-to-federated", json={}))
    assert moved.status_code == 200 and moved.json()["appConnection"]["method"] == "federated", moved.text
    assert check("delete", item, api.delete(f"{base}/{app}/{cid}")).status_code == 200
    assert check("delete", item, api.delete(f"{base}/{app}/{cid}")).status_code == 404
    audit = "/api/v1/audit-logs"
    logged = check("get", audit, api.get(audit, params={"connectionId": cid}))
    assert logged.status_code == 200, logged.text
    assert {"connection.rotate", "connection.delete"} <= {r["action"] for r in logged.json()["auditLogs"]}
    assert check("get", audit, api.get(audit, params={"from": "yesterday"})).status_code == 400
    for limit in (0, 1001):  # the same page sizes as the connections' (0 is not "the default")
        assert check("get", audit, api.get(audit, params={"limit": limit})).status_code == 400
    for when in ("0001-01-01T00:00:00Z", "0999-12-31T00:00:00Z", "9999-12-31T00:00:00Z"):
        for name in ("from", "to"):  # out of range: a 400 (it was a 500 for an early year)
            assert check("get", audit, api.get(audit, params={name: when})).status_code == 400
    assert check("get", audit, api.get(audit, params={"from": "1970-01-01T00:00:00Z"})).status_code == 200
    documented = {f"{m.upper()} {p}" for p, item_ in conformance.document["paths"].items() for m in item_
                  if m != "parameters"}
    walked = {" ".join(seen.split(" ")[:2]) for seen in conformance.seen}
    assert documented <= walked, documented - walked


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", ["text/plain; charset=utf-8"]])
def test_the_local_http_server_s_own_refusal_is_told_apart_however_its_headers_come(content_type: Any) -> None:
    """Found in CI: schemathesis gives each header as a list of its values, and the refusal of a request the local
    server could not parse (a negative case's malformed header) was checked as the service's answer."""
    class Answer:
        status_code = 400
        headers = {"content-type": content_type}
        content = b"Invalid HTTP request received.\n"

    assert _refused_by_the_http_server(Answer())
    Answer.content = b'{"status": 400}'
    assert not _refused_by_the_http_server(Answer())
