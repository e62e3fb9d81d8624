"""Fixtures shared by the tests of shared/."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry
from tests.fakes import pooled_rsa_key


@pytest.fixture(autouse=True)
def pooled_rotation_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotated certificate's new RSA 3072 key comes from a pool of a few (the domain's tests rotate hundreds)."""
    from shared.rotation import certificates

    monkeypatch.setattr(certificates, "new_rsa_key", lambda: pooled_rsa_key(certificates.RSA_BITS))


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
