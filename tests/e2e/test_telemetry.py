"""Telemetry end to end: a rotation through the API and one through a sweep leave the spans and metrics of
``shared.telemetry`` (an in-memory exporter and metric reader of the OpenTelemetry SDK), and none of their
attributes, nor any log line, holds a secret. One request's spans form one tree under the caller's trace: the
server span with its route, and a client span for every request to Entra ID, Key Vault, Tables and Graph."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared import telemetry
from shared.azure.clients import AzureClients
from shared.rotation.sweep import sweep
from shared.store.tables import ConnectionsTable
from tests.e2e.entra import register_rotatable_app
from tests.e2e.sweeping import rotator_at

pytestmark = pytest.mark.e2e

BASE = "/api/v1/app-connections"
APP = "azure-key-vault"
STEPS = ["create", "test", "finish", "revoke"]


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.use_providers(tracer_provider, meter_provider)
    try:
        yield exporter, reader
    finally:
        telemetry.use_providers()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture(scope="module")
async def clients(local_env) -> AzureClients:
    from shared.azure.clients import get_clients

    return get_clients()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def strings_of(spans: list[ReadableSpan], points: dict[str, list[Any]]) -> list[str]:
    out: list[str] = []
    for span in spans:
        out.append(span.name)
        out.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            out.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
    for name, series in points.items():
        out.append(name)
        for point in series:
            out.extend(f"{k}={v}" for k, v in (point.attributes or {}).items())
    return out


async def test_a_rotation_leaves_spans_and_metrics_without_secrets(api, admin, clients, secrets_used, otel,
                                                                   log_capture):
    exporter, reader = otel
    logged_before = len(log_capture.records)
    entra = register_rotatable_app(admin, secrets_used)
    response = api.post(f"{BASE}/{APP}", json={
        "name": f"otel-{uuid.uuid4().hex[:8]}", "method": "client-secret", "credentials": entra.client_secret_body(),
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}},
    })
    assert response.status_code == 201, response.text
    connection = response.json()["appConnection"]
    cid = connection["id"]

    # The rotation on enabling ran inside the HTTP function: its span, then the rotation and its four steps.
    spans = exporter.get_finished_spans()
    http = [s for s in spans if s.name == "POST api/v1/app-connections/{app}"]
    assert len(http) == 1
    assert http[0].attributes["app"] == APP and http[0].attributes["http.response.status_code"] == 201
    assert http[0].attributes["outcome"] == "ok"
    rotation = [s for s in spans if s.name == "rotation" and s.attributes.get("connection.id") == cid]
    assert len(rotation) == 1 and rotation[0].attributes["outcome"] == "succeeded"
    rotation_id = rotation[0].attributes["rotation.id"]
    assert rotation_id and rotation[0].attributes["rotation.trigger"] == "enable"
    assert rotation[0].parent is not None and rotation[0].parent.span_id == http[0].context.span_id
    steps = [s for s in spans if s.name.startswith("rotation.") and s.attributes.get("connection.id") == cid]
    assert [s.attributes["rotation.step"] for s in steps] == STEPS
    for step in steps:
        assert step.name == f"rotation.{step.attributes['rotation.step']}"
        assert step.attributes["app"] == APP and step.attributes["rotation.id"] == rotation_id
        assert step.attributes["outcome"] == "ok"
        assert step.parent is not None and step.parent.span_id == rotation[0].context.span_id

    # A scheduled rotation through a sweep: the backlog gauge and the sweep duration as well.
    due = datetime.fromisoformat(connection["rotation"]["nextRotationAt"].replace("Z", "+00:00"))
    report = await sweep(rotator_at(clients, due + timedelta(minutes=1), only=[cid]))
    assert report.outcomes[cid] == "succeeded"
    points = metric_points(reader)
    rotations = {(p.attributes["app"], p.attributes["outcome"], p.attributes["trigger"]): p.value
                 for p in points[telemetry.ROTATIONS]}
    assert rotations[(APP, "succeeded", "enable")] >= 1
    assert rotations[(APP, "succeeded", "schedule")] >= 1
    durations = [p for p in points[telemetry.ROTATION_DURATION] if p.attributes["outcome"] == "succeeded"]
    assert sum(p.count for p in durations) >= 2 and all(p.sum > 0 for p in durations)
    assert [p.value for p in points[telemetry.SWEEP_BACKLOG]] == [report.due]
    assert sum(p.count for p in points[telemetry.SWEEP_DURATION]) == 1

    # No secret anywhere: the given one, every version in the vault, nor in the log lines of this test.
    record = await ConnectionsTable(clients).get(APP, cid)
    secrets = {entra.client_secret}
    for version in admin.vault_secrets()[record.secret_name]["versions"]:
        secrets.add(json.loads(version["value"])["clientSecret"])
    secrets_used.add(*secrets)
    texts = strings_of(list(exporter.get_finished_spans()), points)
    texts += [r.getMessage() for r in log_capture.records[logged_before:]]
    assert len(secrets) >= 3
    leaks = [text for text in texts for secret in secrets if secret in text]
    assert leaks == []


async def test_a_failed_request_is_an_error_span(api, otel):
    exporter, _ = otel
    response = api.get(f"{BASE}/{APP}/{uuid.uuid4()}")
    assert response.status_code == 404
    [span] = [s for s in exporter.get_finished_spans() if s.name == "GET api/v1/app-connections/{app}/{connectionId}"]
    assert span.attributes["http.response.status_code"] == 404 and span.attributes["outcome"] == "client-error"
    assert span.kind is SpanKind.SERVER and span.status.status_code is StatusCode.UNSET  # a 4xx is the caller's


def tree_of(root: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """``root`` and every span below it."""
    below: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            below.setdefault(span.parent.span_id, []).append(span)
    tree, todo = [], [root]
    while todo:
        span = todo.pop()
        tree.append(span)
        todo.extend(below.get(span.context.span_id, []))
    return tree


def test_one_request_is_one_tree_under_the_callers_trace(api, admin, local_env, secrets_used, otel):
    exporter, _ = otel
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    entra = register_rotatable_app(admin, secrets_used)
    exporter.clear()  # from here on, the request's spans only: none may start a trace of its own
    response = api.post(f"{BASE}/{APP}", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}, json={
        "name": f"tree-{uuid.uuid4().hex[:8]}", "method": "client-secret", "credentials": entra.client_secret_body(),
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}},
    })
    assert response.status_code == 201, response.text
    spans = list(exporter.get_finished_spans())

    # The server span: a child of the given traceparent (the host's span in Azure), named by the route template.
    [server] = [s for s in spans if s.kind is SpanKind.SERVER and f"{s.context.trace_id:032x}" == trace_id]
    assert server.parent is not None and server.parent.is_remote and f"{server.parent.span_id:016x}" == parent_id
    assert server.name == "POST api/v1/app-connections/{app}"
    assert server.attributes["http.route"] == "api/v1/app-connections/{app}"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 201
    assert server.attributes["faas.trigger"] == "http" and server.attributes["faas.invocation_id"]

    # Every span of the request is in that tree, and every upstream call is a client span in it.
    tree = tree_of(server, spans)
    assert {f"{s.context.trace_id:032x}" for s in tree} == {trace_id}
    # (Review of telemetry, 2: a span of the request's work in a trace of its own went unseen.)
    assert {f"{s.context.trace_id:032x}" for s in spans} == {trace_id}, [(s.name, s.attributes) for s in spans]
    assert len(spans) == len(tree)
    calls = [s for s in tree if s.kind is SpanKind.CLIENT]
    assert {s.attributes["upstream"] for s in calls} == {"entra", "key-vault", "tables", "graph"}
    endpoints = {
        "tables": local_env.settings["AzureWebJobsStorage"], "key-vault": local_env.settings["KEY_VAULT_URL"],
        "entra": local_env.settings["AZURE_AUTHORITY_HOST"], "graph": local_env.settings["GRAPH_ENDPOINT"],
    }
    for call in calls:
        attributes = call.attributes
        assert call.name == attributes["http.request.method"]
        assert attributes["http.request.method"] in {"GET", "POST", "PUT", "PATCH", "DELETE", "MERGE"}
        assert attributes["server.address"] == "127.0.0.1"
        port = attributes["server.port"]
        assert f"127.0.0.1:{port}" in endpoints[attributes["upstream"]], (attributes, endpoints)
        assert attributes["url.full"].startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
        status = attributes["http.response.status_code"]
        assert isinstance(status, int)
        if status == 401 and attributes["upstream"] == "key-vault":
            # Key Vault's first request in a process, sent without a token, is answered by its 401 challenge: a step
            # of its protocol, not a failed dependency.
            assert "error.type" not in attributes and call.status.status_code is StatusCode.UNSET
        elif status >= 400:  # Graph's 403 for the tenant's lifetime policy, which the demo app may not read
            assert attributes["error.type"] == str(status) and call.status.status_code is StatusCode.ERROR
        else:
            assert "error.type" not in attributes and call.status.status_code is StatusCode.UNSET
    # The service's own steps sit between them: the rotation on enabling, its steps, each with their calls.
    [rotation] = [s for s in tree if s.name == "rotation"]
    steps = {s.attributes["rotation.step"]: s for s in sorted(tree, key=lambda s: s.start_time or 0)
             if s.name.startswith("rotation.")}
    assert list(steps) == STEPS and all(s.parent.span_id == rotation.context.span_id for s in steps.values())
    assert {c.attributes["upstream"] for c in tree_of(steps["create"], spans) if c.kind is SpanKind.CLIENT} >= \
        {"graph", "key-vault"}

    # The audit records of the request name its trace: from an audit entry to the request's spans.
    connection_id = response.json()["appConnection"]["id"]
    audit = api.get("/api/v1/audit-logs", params={"connectionId": connection_id})
    assert audit.status_code == 200, audit.text
    created = [r for r in audit.json()["auditLogs"] if r["action"] == "connection.create"]
    assert created and {r["traceId"] for r in created} == {trace_id}


async def test_key_vaults_challenge_to_a_new_client_is_not_a_failed_dependency(local_env, otel) -> None:
    """A new instance's first Key Vault request goes without a token and is answered 401 with the challenge naming
    where to get one: a span with the 401, not failed (no ``error.type``), then the request sent again with a token."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    from shared.azure.clients import AzureClients
    from shared.settings import load_settings
    from shared.store.vault import SecretVault

    exporter, _ = otel
    http_challenge_cache.clear()  # the SDK keeps the challenges it saw per process: a new instance's has none
    fresh = AzureClients(load_settings(local_env.settings))
    try:
        exporter.clear()
        await SecretVault(fresh).write(f"challenge-{uuid.uuid4().hex[:8]}", {"clientSecret": "s-" + uuid.uuid4().hex},
                                       {})
    finally:
        await fresh.close()
    sends = [s for s in exporter.get_finished_spans()
             if s.kind is SpanKind.CLIENT and s.attributes.get("upstream") == "key-vault"]
    [challenge, *rest] = sends
    assert challenge.attributes["http.response.status_code"] == 401 and "error.type" not in challenge.attributes
    assert challenge.status.status_code is StatusCode.UNSET
    assert rest and all(s.attributes["http.response.status_code"] < 400 for s in rest)


async def test_a_request_sent_again_is_a_client_span_of_its_own_that_says_so(admin, clients, secrets_used, otel
                                                                              ) -> None:
    """(Review B, session 17.) Each send is a client span; one that repeats a request (a retry after a 429 or a
    503) has ``http.request.resend_count``, through azure-core's Key Vault client and through Graph alike."""
    from localdev.standin.graph import graph_fault, throttle_fault
    from shared.store.vault import SecretVault
    from tests.shared.azure.test_graph import graph_for

    exporter, _ = otel
    vault = SecretVault(clients)
    name = f"resend-{uuid.uuid4().hex[:8]}"
    await vault.write(name, {"clientSecret": "s-" + uuid.uuid4().hex}, {})
    entra = register_rotatable_app(admin, secrets_used, name="resends")
    credential, graph = graph_for(clients, entra)
    exporter.clear()
    try:
        admin.set_faults([graph_fault(503, "ServiceUnavailable", "Try again.", path=rf"^/secrets/{name}",
                                      times=1, retry_after=0),
                          throttle_fault(path=r"^/v1\.0/applications\(", retry_after=0, times=1)])
        await vault.delete(name)
        async with credential:
            await graph.find(entra.client_id)
    finally:
        admin.clear_faults()
    sends = []
    for span in exporter.get_finished_spans():
        attributes = span.attributes or {}
        url = str(attributes.get("url.full"))
        if span.kind is SpanKind.CLIENT and ("/secrets/" + name in url or "applications(" in url):
            sends.append((attributes.get("upstream"), attributes.get("http.response.status_code"),
                          attributes.get("http.request.resend_count")))
    assert ("key-vault", 503, None) in sends and ("key-vault", 200, 1) in sends, sends
    assert sends[-2:] == [("graph", 429, None), ("graph", 200, 1)], sends
