"""Traces and metrics through the OpenTelemetry API; exported to Application Insights only when configured.

* :func:`configure` (``function_app.py`` calls it once): with ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set,
  ``azure-monitor-opentelemetry`` exports traces, metrics and logs (with Microsoft Entra ID auth when
  ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` says ``Authorization=AAD``). Without it nothing is imported
  and nothing is exported.
* :func:`span` and the ``record_*`` functions are what the service calls. They import ``opentelemetry`` (the
  API only) on first use, never at import, so a cold start stays cheap; without an SDK they are no-ops.

Attributes carry ids, names, steps and outcomes only, never a secret: span and metric attributes are set here
from explicit values, and no exception message is recorded (an SDK's message may quote a request).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

log = logging.getLogger(__name__)

SCOPE = "app_connections"
ROTATIONS = "app_connections.rotations"
ROTATION_DURATION = "app_connections.rotation.duration"
SWEEP_BACKLOG = "app_connections.sweep.backlog"
SWEEP_DURATION = "app_connections.sweep.duration"
SWEEP_CONCURRENCY = "app_connections.sweep.concurrency"

Attributes = Mapping[str, str | int | float | bool | None]


@dataclass
class _Instruments:
    tracer: Tracer
    rotations: Counter
    rotation_duration: Histogram
    sweep_backlog: Any  # a synchronous gauge (opentelemetry.metrics._Gauge)
    sweep_duration: Histogram
    sweep_concurrency: Histogram


_lock = threading.Lock()
_instruments: _Instruments | None = None
_tracer_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None
_configured = False


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Export to Application Insights when its connection string is set (once per process). True if exporting."""
    global _configured
    from shared.settings import load_telemetry_settings

    settings = load_telemetry_settings(env)
    if not settings.connection_string:
        return False
    with _lock:
        if _configured:
            return True
        _configured = True
    if _sdk_already_installed():
        # The Functions Python worker configures Azure Monitor itself when told to
        # (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY): configuring it twice would export everything twice.
        log.info("Telemetry: an OpenTelemetry SDK is already configured in this process; using it")
        return True
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {"connection_string": settings.connection_string}
    if settings.aad_client_id is not None:
        from azure.identity import ManagedIdentityCredential

        options["credential"] = ManagedIdentityCredential(client_id=settings.aad_client_id or None)
    configure_azure_monitor(**options)
    log.info("Telemetry: exporting traces, metrics and logs to Application Insights")
    return True


def _sdk_already_installed() -> bool:
    """Whether a real (SDK) tracer provider is installed globally, rather than the API's proxy or no-op one."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return type(provider).__module__.startswith("opentelemetry.sdk")


def use_providers(tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None) -> None:
    """Send this module's spans and metrics to these providers instead of the global ones (tests), or back to the
    global ones with no arguments."""
    global _instruments, _tracer_provider, _meter_provider
    with _lock:
        _tracer_provider, _meter_provider, _instruments = tracer_provider, meter_provider, None


def _get() -> _Instruments:
    global _instruments
    instruments = _instruments
    if instruments is not None:
        return instruments
    with _lock:
        if _instruments is None:
            from opentelemetry import metrics, trace

            tracer = (_tracer_provider.get_tracer(SCOPE) if _tracer_provider is not None
                      else trace.get_tracer(SCOPE))
            meter = _meter_provider.get_meter(SCOPE) if _meter_provider is not None else metrics.get_meter(SCOPE)
            _instruments = _Instruments(
                tracer=tracer,
                rotations=meter.create_counter(ROTATIONS, unit="{rotation}", description="Rotations, by outcome"),
                rotation_duration=meter.create_histogram(
                    ROTATION_DURATION, unit="s", description="Wall time of one rotation run (all its steps)"),
                sweep_backlog=meter.create_gauge(
                    SWEEP_BACKLOG, unit="{rotation}", description="Rotations due when a sweep starts"),
                sweep_duration=meter.create_histogram(SWEEP_DURATION, unit="s", description="Wall time of a sweep"),
                sweep_concurrency=meter.create_histogram(
                    SWEEP_CONCURRENCY, unit="{rotation}",
                    description="Concurrency limit of a sweep when it changes (adaptive, on throttling)"),
            )
        return _instruments


def _clean(attributes: Attributes) -> dict[str, str | int | float | bool]:
    return {key: value for key, value in attributes.items() if value is not None}


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span]:
    """A span around a block. An escaping exception sets ``outcome=error`` and ``error.type`` (its class name,
    never its message) unless the block set an outcome; the span's status is then ERROR."""
    from opentelemetry.trace import Status, StatusCode

    tracer = _get().tracer
    with tracer.start_as_current_span(
        name, attributes=_clean(attributes or {}), record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as error:
            current.set_attribute("error.type", type(error).__name__)
            if not _has_attribute(current, "outcome"):
                current.set_attribute("outcome", "error")
            current.set_status(Status(StatusCode.ERROR))
            raise


def _has_attribute(current: Span, key: str) -> bool:
    attributes = getattr(current, "attributes", None)
    return bool(attributes) and key in attributes  # type: ignore[operator]


def set_attributes(current: Span, attributes: Attributes) -> None:
    current.set_attributes(_clean(attributes))


def record_rotation(app: str, outcome: str, trigger: str | None, seconds: float) -> None:
    instruments = _get()
    attributes = _clean({"app": app, "outcome": outcome, "trigger": trigger})
    instruments.rotations.add(1, attributes)
    instruments.rotation_duration.record(seconds, attributes)


def record_sweep_start(due: int) -> None:
    _get().sweep_backlog.set(due)


def record_sweep_end(seconds: float, succeeded: int, failed: int) -> None:
    _get().sweep_duration.record(seconds, {"outcome": "failures" if failed else "ok"})


def record_concurrency(limit: int) -> None:
    _get().sweep_concurrency.record(limit)


class Stopwatch:
    """Monotonic seconds since construction."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started
