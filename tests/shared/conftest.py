"""Fixtures shared by the tests of shared/."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry


@pytest.fixture
def exporter():  # type: ignore[no-untyped-def]
    """The service's spans, exported to memory through the real OpenTelemetry SDK."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_providers(provider)
    yield exporter
    telemetry.use_providers()
    provider.shutdown()
