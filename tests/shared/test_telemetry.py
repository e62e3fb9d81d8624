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


def test_a_span_records_the_error_type_but_not_its_message(exporter):
    with pytest.raises(RuntimeError), telemetry.span("step", {"app": "a", "rotation.id": None}):
        raise RuntimeError("client_secret=hunter2-must-not-appear")
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes) == {"app": "a", "error.type": "RuntimeError", "outcome": "error"}
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()  # no exception event: its message could quote a request


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
