"""shared.telemetry's HTTP spans: an invocation's server span joins the host's trace and names its route; a
request to an upstream is a client span with OpenTelemetry's HTTP attributes, its URL free of query values;
every trace is kept; azure-core's per-request log is quiet. (End to end: tests/e2e/test_telemetry.py.)"""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from shared import telemetry
from shared.functions.http import endpoint, http_route, request_context, traced
from shared.functions.invocation import traced_timer

ROOT = Path(__file__).resolve().parents[2]
HOST_TRACE, HOST_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"

bp = func.Blueprint()  # http_route reads the route template from the blueprint of the function's module


@bp.function_name("sample_page")
@bp.route(route="samples/{app}/{sampleId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def sample_page(req: func.HttpRequest) -> func.HttpResponse:
    status = int(req.params.get("status", "200"))
    return func.HttpResponse("page", status_code=status)


@bp.function_name("sample_audited_page")
@bp.route(route="audited/{app}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def sample_audited_page(req: func.HttpRequest) -> func.HttpResponse:
    """An anonymous route that audits (the console's sign-in, the OAuth callback): its record's trace."""
    from shared.audit import Actor

    return func.HttpResponse(request_context(req, Actor("anonymous", "a page", "user")).trace_id or "none")


@bp.function_name("sample_reader")
@bp.route(route="readers/{app}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint("Reader")
async def sample_reader(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("never reached without a token")


@traced_timer
async def sample_sweep(timer: func.TimerRequest) -> None:
    with telemetry.span("rotation", {"app": "azure-key-vault"}):
        pass


@dataclass(frozen=True)
class Timer:
    past_due: bool


@dataclass(frozen=True)
class HostTraceContext:
    trace_parent: str
    trace_state: str = ""


@dataclass(frozen=True)
class HostContext:
    """What the Functions worker passes as ``context`` (the attributes the service reads)."""

    invocation_id: str
    trace_context: HostTraceContext | None


def request(url: str, headers: dict[str, str] | None = None, **route: str) -> func.HttpRequest:
    params = dict(part.split("=", 1) for part in url.partition("?")[2].split("&") if part)
    return func.HttpRequest("GET", url, headers=headers or {}, params=params, route_params=route, body=b"")


# -- server spans ---------------------------------------------------------------------------------------------------
async def test_the_server_span_is_a_child_of_the_hosts_span_and_names_the_route(exporter):
    req = request("https://svc.example/samples/azure-key-vault/42?code=secret-code",
                  {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}, app="azure-key-vault", sampleId="42")
    context = HostContext("inv-1", HostTraceContext(f"00-{HOST_TRACE}-{HOST_SPAN}-01", "az=1"))
    response = await sample_page(req, context=context)  # type: ignore[call-arg]
    assert response.status_code == 200
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == HOST_TRACE  # the host's span wins over the caller's header
    assert span.parent is not None and span.parent.is_remote and f"{span.parent.span_id:016x}" == HOST_SPAN
    assert span.context.trace_state.get("az") == "1"
    assert span.name == "GET samples/{app}/{sampleId}"
    assert dict(span.attributes) == {
        "http.request.method": "GET", "http.route": "samples/{app}/{sampleId}",
        "url.path": "/samples/azure-key-vault/42", "url.scheme": "https",
        "faas.trigger": "http", "faas.name": "sample_page", "faas.invocation_id": "inv-1",
        "app": "azure-key-vault", "http.response.status_code": 200, "outcome": "ok",
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_without_the_hosts_trace_context_the_callers_traceparent_is_the_parent(exporter):
    req = request("https://svc.example/samples/a/1", {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    await sample_page(req, context=HostContext("inv-2", None))  # type: ignore[call-arg]
    await sample_page(request("https://svc.example/samples/a/1", {"traceparent": "00-not-a-trace-01"}))
    joined, fresh = exporter.get_finished_spans()
    assert f"{joined.context.trace_id:032x}" == CALLER_TRACE and f"{joined.parent.span_id:016x}" == CALLER_SPAN
    assert fresh.parent is None  # a malformed traceparent starts a trace of its own


async def test_an_audit_record_names_the_trace_of_the_invocations_span_never_the_callers_header(exporter):
    forged = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    host = HostContext("inv-3", HostTraceContext(f"00-{HOST_TRACE}-{HOST_SPAN}-01"))
    hosted = await sample_audited_page(request("https://svc.example/audited/a", forged),  # type: ignore[call-arg]
                                       context=host)
    fresh = await sample_audited_page(request("https://svc.example/audited/a"))
    hosted_span, fresh_span = exporter.get_finished_spans()
    assert hosted.get_body().decode() == HOST_TRACE == f"{hosted_span.context.trace_id:032x}"
    assert fresh.get_body().decode() == f"{fresh_span.context.trace_id:032x}"  # a trace of its own, not "none"


async def test_a_server_error_marks_the_span_failed_and_a_client_error_does_not(exporter):
    await sample_page(request("https://svc.example/samples/a/1?status=503"))
    await sample_page(request("https://svc.example/samples/a/1?status=404"))
    failed, refused = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["error.type"] == "503"
    assert failed.attributes["outcome"] == "error"
    assert refused.status.status_code is StatusCode.UNSET and "error.type" not in refused.attributes
    assert refused.attributes["outcome"] == "client-error"


async def test_a_request_refused_before_its_handler_still_has_its_server_span(exporter):
    response = await sample_reader(request("https://svc.example/readers/azure-key-vault", app="azure-key-vault"))
    assert response.status_code >= 400  # no access token (and here no settings either): refused, never run
    [span] = exporter.get_finished_spans()
    assert span.name == "GET readers/{app}" and span.attributes["http.response.status_code"] == response.status_code


@pytest.fixture(scope="module")
def app_functions() -> list[Any]:
    """The app's functions, through the local host's index (cached: indexing twice in one process fails)."""
    from localdev.host import index_functions, load_function_app

    return list(index_functions(load_function_app("function_app", ROOT)))


def test_every_http_function_of_the_app_takes_context_and_has_its_route_template(app_functions):
    routes = {}
    for function in app_functions:
        if not function.is_http_function():
            continue
        user_function = function.get_user_function()
        parameters = inspect.signature(user_function).parameters
        # The worker passes ``context`` (with the host's trace context) only to a function that declares it.
        assert list(parameters) == ["req", "context"], function.get_function_name()
        assert parameters["context"].annotation is func.Context and parameters["context"].default is None
        # The worker resolves the annotations and refuses a ``context`` that is not an azure.functions.Context.
        assert typing.get_type_hints(user_function)["context"] is func.Context
        assert list(inspect.signature(user_function.__wrapped__).parameters) == ["req"]  # the handler is untouched
        routes[function.get_function_name()] = (function.get_trigger().route, http_route(user_function))
    assert len(routes) >= 15 and all(declared == found for declared, found in routes.values()), routes
    assert routes["get_app_connection"][1] == "api/v1/app-connections/{app}/{connectionId}"
    assert routes["app_connection_oauth_callback"][1] == "organization/app-connections/azure/oauth/callback"


async def test_a_timer_run_is_one_trace_under_the_hosts_span(exporter):
    context = HostContext("inv-3", HostTraceContext(f"00-{HOST_TRACE}-{HOST_SPAN}-01"))
    await sample_sweep(Timer(past_due=True), context=context)  # type: ignore[arg-type, call-arg]
    rotation, run = exporter.get_finished_spans()
    assert run.kind is SpanKind.SERVER and run.name == "sample_sweep"
    assert f"{run.parent.span_id:016x}" == HOST_SPAN and f"{run.context.trace_id:032x}" == HOST_TRACE
    assert dict(run.attributes) == {"faas.trigger": "timer", "faas.name": "sample_sweep",
                                    "faas.invocation_id": "inv-3", "timer.past_due": True}
    assert rotation.parent.span_id == run.context.span_id


def test_every_timer_function_of_the_app_takes_context(app_functions):
    timers = [f for f in app_functions if not f.is_http_function()]
    assert {f.get_function_name() for f in timers} >= {"rotate_due_credentials", "check_connection_health"}
    for function in timers:
        assert list(inspect.signature(function.get_user_function()).parameters) == ["timer", "context"]
        assert typing.get_type_hints(function.get_user_function())["context"] is func.Context


# -- client spans ---------------------------------------------------------------------------------------------------
def test_a_url_keeps_its_path_and_the_api_version_only():
    assert telemetry.safe_url("https://user:pw@login.example/t/oauth2/v2.0/token?code=abc&api-version=7.5#state") \
        == "https://login.example/t/oauth2/v2.0/token?code=REDACTED&api-version=7.5"
    assert telemetry.safe_url("http://[::1]:8080/x?sig=s3cr3t&se=2026") == "http://[::1]:8080/x?sig=REDACTED&se=REDACTED"
    assert telemetry.safe_url("https://graph.example/v1.0/applications") == "https://graph.example/v1.0/applications"


def test_a_client_span_has_the_http_attributes_and_propagates_the_trace(exporter):
    headers: dict[str, str] = {"authorization": "Bearer secret-token"}
    with telemetry.client_span("put", "https://vault.example:8443/secrets/s1?api-version=7.5&token=t0k3n", headers,
                               {"upstream": "key-vault"}) as span:
        telemetry.set_response(span, 200)
    [finished] = exporter.get_finished_spans()
    assert finished.kind is SpanKind.CLIENT and finished.name == "PUT"
    assert dict(finished.attributes) == {
        "http.request.method": "PUT", "server.address": "vault.example", "server.port": 8443,
        "url.full": "https://vault.example:8443/secrets/s1?api-version=7.5&token=REDACTED",
        "upstream": "key-vault", "http.response.status_code": 200,
    }
    assert finished.status.status_code is StatusCode.UNSET
    context = finished.context
    assert headers["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert headers["authorization"] == "Bearer secret-token"  # added to, never read


def test_an_upstream_receives_the_trace_state_of_the_hosts_span(exporter):
    headers: dict[str, str] = {}
    with telemetry.server_span("GET x", traceparent=f"00-{HOST_TRACE}-{HOST_SPAN}-01", tracestate="az=1"), \
            telemetry.client_span("GET", "https://graph.example/v1.0/me", headers):
        pass
    call, _ = exporter.get_finished_spans()
    assert headers == {"traceparent": f"00-{HOST_TRACE}-{call.context.span_id:016x}-01", "tracestate": "az=1"}


def test_a_client_span_without_a_port_has_the_schemes(exporter):
    with telemetry.client_span("GET", "https://graph.example/v1.0/applications"):
        pass
    with telemetry.client_span("GET", "http://127.0.0.1/devstoreaccount1/Tables"):
        pass
    assert [s.attributes["server.port"] for s in exporter.get_finished_spans()] == [443, 80]


def test_an_authentication_challenge_is_a_step_not_a_failed_call(exporter):
    """Key Vault answers a client's first request, sent without a token, with a 401 naming where to get one: every
    cold instance would otherwise show a failed dependency. A 401 to a request that sent credentials fails."""
    with telemetry.client_span("GET", "https://vault.example/secrets/s1") as span:
        telemetry.set_response(span, 401, challenge=True)
    with telemetry.client_span("GET", "https://vault.example/secrets/s1") as span:
        telemetry.set_response(span, 401)
    with telemetry.client_span("GET", "https://vault.example/secrets/s1") as span:
        telemetry.set_response(span, 403, challenge=True)
    challenged, refused, forbidden = exporter.get_finished_spans()
    assert challenged.attributes["http.response.status_code"] == 401 and "error.type" not in challenged.attributes
    assert challenged.status.status_code is StatusCode.UNSET
    assert refused.attributes["error.type"] == "401" and refused.status.status_code is StatusCode.ERROR
    assert forbidden.attributes["error.type"] == "403" and forbidden.status.status_code is StatusCode.ERROR


class UpstreamDropped(Exception):
    pass


def test_a_failed_call_records_the_status_or_the_exception_type_never_the_message(exporter):
    with telemetry.client_span("POST", "https://login.example/t/oauth2/v2.0/token") as span:
        telemetry.set_response(span, 503)
    with pytest.raises(UpstreamDropped), telemetry.client_span("GET", "https://graph.example/v1.0/me"):
        raise UpstreamDropped("client_secret=hunter2")
    with pytest.raises(ConnectionResetError), telemetry.client_span("GET", "https://graph.example/v1.0/me"):
        raise ConnectionResetError("reset")
    answered, dropped, reset = exporter.get_finished_spans()
    assert answered.attributes["error.type"] == "503" and answered.attributes["http.response.status_code"] == 503
    assert dropped.attributes["error.type"] == f"{__name__}.UpstreamDropped"
    assert "http.response.status_code" not in dropped.attributes and dropped.events == ()
    assert reset.attributes["error.type"] == "ConnectionResetError"
    assert all(s.status.status_code is StatusCode.ERROR for s in (answered, dropped, reset))


# -- configuration --------------------------------------------------------------------------------------------------
def test_azure_cores_per_request_log_is_lowered_to_warning():
    for name in telemetry.PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    telemetry.configure({})
    assert telemetry.AZURE_HTTP_LOGGER == "azure.core.pipeline.policies.http_logging_policy"
    for name in telemetry.PER_REQUEST_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)


@pytest.mark.parametrize(("sampler", "expected"), [
    (None, "ApplicationInsightsSampler1.0"),
    ("always_on", "AlwaysOnSampler"),
    ("parentbased_traceidratio", "ApplicationInsightsSampler1.0"),  # misspelt: the distro would keep 5 a second
    ("always_on ", "ApplicationInsightsSampler1.0"),  # the distro reads it as it is: not always_on either
])
def test_exporting_keeps_every_trace_and_switches_off_azure_cores_own_spans(sampler, expected):
    code = (
        "import json\n"
        "from shared import telemetry\n"
        "env = {'APPLICATIONINSIGHTS_CONNECTION_STRING': 'InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/'}\n"
        "import os; env.update({k: v for k, v in os.environ.items() if k == 'OTEL_TRACES_SAMPLER'})\n"
        "configured = telemetry.configure(env)\n"
        "from opentelemetry import trace\n"
        "from azure.core.settings import settings\n"
        "print(json.dumps([configured, trace.get_tracer_provider().sampler.get_description(),\n"
        "                  settings.tracing_enabled()]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"}
    if sampler:
        env["OTEL_TRACES_SAMPLER"] = sampler
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env,
                         timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, expected, False]


def test_the_samplers_the_service_passes_on_are_the_distros():
    from azure.monitor.opentelemetry._constants import SUPPORTED_OTEL_SAMPLERS

    assert frozenset(SUPPORTED_OTEL_SAMPLERS) == telemetry.DISTRO_SAMPLERS
