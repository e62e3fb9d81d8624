"""shared.telemetry: off (and cheap) without Application Insights; spans carry outcomes, never messages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import StatusCode

from shared import telemetry
from shared.settings import load_telemetry_settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings():
    assert load_telemetry_settings({}).connection_string is None
    on = load_telemetry_settings({
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=abc;Authorization=AAD",
    })
    assert on.connection_string is not None and on.aad_client_id == "abc"
    system = load_telemetry_settings({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD"})
    assert system.aad_client_id == ""
    assert load_telemetry_settings({"APPLICATIONINSIGHTS_CONNECTION_STRING": "@Microsoft.KeyVault(x)"}) \
        .connection_string is None


def test_without_a_connection_string_nothing_is_configured_or_imported():
    assert telemetry.configure({}) is False
    code = (
        "import json, sys, function_app\n"
        "function_app.app.get_functions()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'azure.monitor')))))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout) == []


def test_an_sdk_the_worker_already_configured_is_used_not_configured_twice():
    code = (
        "import sys\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "from shared import telemetry\n"
        "env = {'APPLICATIONINSIGHTS_CONNECTION_STRING': 'InstrumentationKey=00000000-0000-0000-0000-000000000000'}\n"
        "print(telemetry.configure(env), 'azure.monitor.opentelemetry' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.parametrize("connection_string", ["InstrumentationKey=not-a-guid", "garbage",
                                               "IngestionEndpoint=https://x.example/"])
def test_a_malformed_connection_string_is_logged_and_the_app_still_loads_without_exporting(connection_string):
    """(Review B, session 17.) Azure Monitor's ValueError stopped ``import function_app``: the host found no
    function, no API, no OAuth callback, no sweep. Its message is not logged (it may quote the string)."""
    code = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.ERROR, stream=sys.stderr)\n"
        "import function_app\n"
        "from shared import telemetry\n"
        "print(json.dumps([len(function_app.app.get_functions()), telemetry.configure()]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    functions, exporting = json.loads(out.stdout.splitlines()[-1])
    assert functions > 10 and exporting is False
    assert "could not be configured" in out.stderr and connection_string not in out.stderr


def test_an_unknown_sampler_is_reported_when_the_worker_configured_azure_monitor():
    """(Review B.) The check of OTEL_TRACES_SAMPLER ran only where the service configures Azure Monitor itself,
    not where it is deployed (the worker configures it): a misspelt name silently kept 5 traces a second."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.ERROR, stream=sys.stderr)\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "from shared import telemetry\n"
        "env = {'APPLICATIONINSIGHTS_CONNECTION_STRING': 'InstrumentationKey=00000000-0000-0000-0000-000000000000',\n"
        "       'OTEL_TRACES_SAMPLER': 'parentbased_traceidratio'}\n"
        "print(telemetry.configure(env))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["True"]
    assert "OTEL_TRACES_SAMPLER=parentbased_traceidratio is not a sampler" in out.stderr
    assert "fix the setting" in out.stderr


def test_a_span_records_the_error_type_but_not_its_message(exporter):
    with pytest.raises(RuntimeError), telemetry.span("step", {"app": "a", "rotation.id": None}):
        raise RuntimeError("client_secret=hunter2-must-not-appear")
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes) == {"app": "a", "error.type": "RuntimeError", "outcome": "error"}
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()  # no exception event: its message could quote a request


def test_a_failed_azure_call_names_its_cause_not_the_sdks_wrapper(exporter):
    """azure-core raises a transport's failure as ``ServiceRequestError`` with the failure as its
    ``inner_exception``: every dropped connection, refused connection and timeout would share one ``error.type``."""
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    for wrapped, cause in ((ServiceRequestError, ConnectionRefusedError), (ServiceResponseError, TimeoutError)):
        with pytest.raises(wrapped), telemetry.client_span("GET", "https://example.test/a"):
            raise wrapped("the transport failed", error=cause("refused"))
    with pytest.raises(ServiceRequestError), telemetry.client_span("GET", "https://example.test/b"):
        raise ServiceRequestError("no cause kept")
    assert [span.attributes["error.type"] for span in exporter.get_finished_spans()] == [
        "ConnectionRefusedError", "TimeoutError", "azure.core.exceptions.ServiceRequestError"]


def test_an_outcome_set_by_the_block_is_kept(exporter):
    def block() -> None:
        with telemetry.span("step") as span:
            span.set_attribute("outcome", "failed")
            raise ValueError

    with pytest.raises(ValueError):
        block()
    [finished] = exporter.get_finished_spans()
    assert finished.attributes["outcome"] == "failed"


def test_metrics_without_an_sdk_are_no_ops():
    telemetry.use_providers()
    telemetry.record_rotation("azure-key-vault", "succeeded", "schedule", 0.1)
    telemetry.record_sweep_start(3)
    telemetry.record_sweep_end(1.0, 3, 0)


QUIET_SPANS = """
import json, sys
from shared import telemetry
if sys.argv[1] in ("api", "api-unset"):
    import opentelemetry.trace  # the API loaded, no SDK
if sys.argv[1] == "api":  # its no-op spans, from a provider set (no longer the proxy it hands out before one is)
    opentelemetry.trace.set_tracer_provider(opentelemetry.trace.NoOpTracerProvider())
host = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
seen = {}
for parent in (host, "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "junk", None,
               "00-00000000000000000000000000000000-b7ad6b7169203331-01"):
    with telemetry.server_span("GET /x", {"a": 1}, traceparent=parent, tracestate="k=v") as server:
        server.set_attributes({"http.response.status_code": 200})
        headers = {}
        with telemetry.client_span("GET", "https://example.test/a?code=1", headers) as client:
            telemetry.set_response(client, 500)
            with telemetry.span("inner"):
                inner = telemetry.current_trace_id()
        seen[str(parent)] = [headers, telemetry.current_trace_id(), inner]
    seen[str(parent) + " after"] = telemetry.current_trace_id()
print(json.dumps({"seen": seen, "api": "opentelemetry.trace" in sys.modules, "quiet": telemetry.quiet()}))
"""


def test_without_opentelemetry_loaded_spans_are_quiet_but_carry_the_hosts_trace_as_the_api_does():
    """A process where nothing loaded the OpenTelemetry API (no connection string, no worker telemetry) cannot
    have a tracer provider: its spans record nothing, the API is not imported (a cold start's first request saves
    its import), and the host's trace still reaches upstream requests and audit records exactly as the API's
    no-op spans carry it. So are they while the API is loaded but no tracer provider is set: every span would be
    a no-op one."""
    runs = {}
    for mode in ("quiet", "api", "api-unset"):
        out = subprocess.run([sys.executable, "-c", QUIET_SPANS, mode], cwd=ROOT, capture_output=True, text=True,
                             check=True, env={"PATH": "/usr/bin:/bin"})
        runs[mode] = json.loads(out.stdout)
    assert runs["quiet"]["api"] is False and runs["api"]["api"] is True and runs["api-unset"]["api"] is True
    assert [runs[mode]["quiet"] for mode in ("quiet", "api", "api-unset")] == [True, False, True]
    assert runs["quiet"]["seen"] == runs["api"]["seen"] == runs["api-unset"]["seen"]
    host = runs["quiet"]["seen"]["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    assert host == [{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                     "tracestate": "k=v"}, "0af7651916cd43dd8448eb211c80319c", "0af7651916cd43dd8448eb211c80319c"]
    assert runs["quiet"]["seen"]["junk"] == [{}, None, None]
