"""Traces and metrics through the OpenTelemetry API; exported to Application Insights only when configured.

* :func:`configure` (``function_app.py`` calls it once): with ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set,
  ``azure-monitor-opentelemetry`` exports traces, metrics and logs (with Microsoft Entra ID auth when
  ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` says ``Authorization=AAD``). Without it nothing is imported
  and nothing is exported.
* :func:`span` and the ``record_*`` functions are what the service calls. They import ``opentelemetry`` (the
  API only) on first use, never at import, so a cold start stays cheap; without an SDK they are no-ops. While
  nothing in the process has loaded ``opentelemetry`` at all (no connection string, no worker telemetry, no test
  provider), no tracer provider can be set, so every span would be the API's no-op one: spans are then quiet
  ones that carry the trace context as the no-op spans do, and the API is not even imported (about 35 ms of a
  cold start's first request).
* :func:`server_span` is the span of one invocation, a child of the Functions host's span (the invocation's
  ``context.trace_context``); :func:`client_span` is the span of one HTTP request to Entra ID, Graph, Key Vault
  or Table Storage, with the OpenTelemetry HTTP attributes, its URL's query values redacted (:func:`safe_url`).
* azure-core logs one INFO record with headers per request, httpx one with the URL: :func:`configure` lowers
  both loggers to WARNING.

Sampling (``docs/telemetry.md``): every span is kept. The infrastructure sets ``OTEL_TRACES_SAMPLER=always_on``,
which azure-monitor-opentelemetry reads, here and in the worker; its default, 5 traces a second, would drop
failed requests and rotations in a burst, and this service's volume is far below what sampling would save.

Attributes carry ids, names, steps and outcomes only, never a secret: span and metric attributes are set here
from explicit values, and no exception message is recorded (an SDK's message may quote a request).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from shared.settings import TelemetrySettings

log = logging.getLogger(__name__)

SCOPE = "app_connections"
ROTATIONS = "app_connections.rotations"
ROTATION_DURATION = "app_connections.rotation.duration"
SWEEP_BACKLOG = "app_connections.sweep.backlog"
SWEEP_DURATION = "app_connections.sweep.duration"
SWEEP_CONCURRENCY = "app_connections.sweep.concurrency"

Attributes = Mapping[str, str | int | float | bool | None]

# azure-core's per-request log (INFO, with the request's headers and query parameter names), httpx's (INFO, one
# line with the URL of every Graph request), and azure-identity's (INFO, a line for every token a credential gets;
# a credential is built per health check, rotation and validation): the client spans say the same without them.
AZURE_HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"
PER_REQUEST_LOGGERS = (AZURE_HTTP_LOGGER, "httpx", "azure.identity")
# The values of OTEL_TRACES_SAMPLER that azure-monitor-opentelemetry knows (its SUPPORTED_OTEL_SAMPLERS).
DISTRO_SAMPLERS = frozenset({"microsoft.rate_limited", "microsoft.fixed_percentage", "always_on", "always_off",
                             "trace_id_ratio", "parentbased_always_on", "parentbased_always_off",
                             "parentbased_trace_id_ratio"})
# Query parameters whose values are kept in ``url.full``; any other value may be a code or a token.
KEPT_QUERY_PARAMETERS = frozenset({"api-version"})
REDACTED = "REDACTED"


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
_configured: bool | None = None  # None: not tried yet


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Export to Application Insights when its connection string is set (once per process). True if exporting.
    A set-up that fails (a malformed connection string, say) is logged, and the service runs without exporting:
    telemetry never stops the API, the OAuth callback or the sweeps from loading."""
    global _configured
    from shared.settings import load_telemetry_settings

    quiet_azure_http_logging()
    settings = load_telemetry_settings(env)
    if not settings.connection_string:
        return False
    with _lock:
        if _configured is None:
            try:
                _configured = _start(settings)
            except Exception as error:  # its message may quote the connection string: the type only
                log.error("Telemetry: Azure Monitor could not be configured (%s: check "
                          "APPLICATIONINSIGHTS_CONNECTION_STRING); nothing is exported", type(error).__name__)
                _configured = False
        return _configured


def _start(settings: TelemetrySettings) -> bool:
    if settings.sampler and settings.sampler not in DISTRO_SAMPLERS:
        # The distro would keep 5 traces a second, and drop failures in a burst (docs/telemetry.md, "Sampling").
        log.error("Telemetry: OTEL_TRACES_SAMPLER=%s is not a sampler Azure Monitor knows (%s)%s", settings.sampler,
                  ", ".join(sorted(DISTRO_SAMPLERS)),
                  "; the worker's rate-limited default applies: fix the setting" if _sdk_already_installed()
                  else "; every trace is kept")
    if _sdk_already_installed():
        # The Functions Python worker configures Azure Monitor itself when told to
        # (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY): configuring it twice would export everything twice.
        log.info("Telemetry: an OpenTelemetry SDK is already configured in this process; using it")
        _no_azure_sdk_spans()
        return True
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {
        "connection_string": settings.connection_string,
        # Every HTTP request of the service is a client span of shared.telemetry (the SDKs' requests go out
        # through shared.azure.clients' transport): azure-core's own spans would count each one twice.
        "instrumentation_options": {"azure_sdk": {"enabled": False}},
    }
    if settings.sampler not in DISTRO_SAMPLERS:
        # Keep every trace (docs/telemetry.md); an OTEL_TRACES_SAMPLER setting the distro knows, read by it, wins.
        options["sampling_ratio"] = 1.0
    if settings.aad_client_id is not None:
        from azure.identity import ManagedIdentityCredential

        options["credential"] = ManagedIdentityCredential(client_id=settings.aad_client_id or None)
    configure_azure_monitor(**options)
    _no_azure_sdk_spans()
    log.info("Telemetry: exporting traces, metrics and logs to Application Insights")
    return True


def quiet_azure_http_logging() -> None:
    """azure-core logs every request and response at INFO with their headers, httpx every request's URL: keep
    their warnings only."""
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _no_azure_sdk_spans() -> None:
    """Switch off azure-core's spans (the worker's Azure Monitor set-up turns them on): the transport of
    ``shared.azure.clients`` already makes one client span per request, with the same attributes."""
    from azure.core.settings import settings

    settings.tracing_enabled = False


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


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """A span around a block. An escaping exception sets ``outcome=error`` and ``error.type`` (its class name,
    never its message) unless the block set an outcome; the span's status is then ERROR."""
    if quiet():
        return contextlib.nullcontext(_quiet_current.get())
    return _recording_span(name, attributes, "internal")


def server_span(name: str, attributes: Attributes | None = None, *, traceparent: str | None = None,
                tracestate: str | None = None) -> AbstractContextManager[Span]:
    """The span of one invocation, as :func:`span`: a SERVER span whose parent is ``traceparent`` (the host's
    span, from the invocation's ``context.trace_context``), or the current span when that is missing or
    malformed."""
    if quiet():
        return _QuietBlock(_quiet_parent(traceparent, tracestate))
    from opentelemetry import context as otel_context

    parent = None
    if traceparent:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
        parent = TraceContextTextMapPropagator().extract(carrier, context=otel_context.get_current())
    return _recording_span(name, attributes, "server", parent)


def client_span(method: str, url: str, headers: MutableMapping[str, str] | None = None,
                attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """The span of one HTTP request to an upstream (each attempt of a retried call is its own span), named by
    its method, with ``http.request.method``, ``server.address``, ``server.port`` and ``url.full`` (query values
    redacted, no user info). The W3C trace context is added to ``headers``, so the upstream's own logs carry
    the trace. Record the answer with :func:`set_response`; a failure without one sets ``error.type`` to the
    exception's qualified class name (never its message). Quiet, the attributes are not even worked out."""
    if quiet():
        current = _quiet_current.get()
        if headers is not None:
            _inject(current, headers)
        return contextlib.nullcontext(current)
    return _recording_client_span(method, url, headers, attributes)


def resent(count: int) -> dict[str, int]:
    """A client span's ``http.request.resend_count``: how many times the same request was sent before (a retry,
    or a replay on a new connection); none on a first send, as the semantic conventions say."""
    return {"http.request.resend_count": count} if count else {}


@contextlib.contextmanager
def _recording_client_span(method: str, url: str, headers: MutableMapping[str, str] | None,
                           attributes: Attributes | None) -> Iterator[Span]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    base = {
        "http.request.method": method.upper(),
        "server.address": parts.hostname,
        "server.port": port,
        "url.full": safe_url(url),
    }
    with _recording_span(method.upper(), {**base, **(attributes or {})}, "client", qualified_errors=True) as current:
        if headers is not None:
            _inject(current, headers)
        yield current


def _inject(current: Span, headers: MutableMapping[str, str]) -> None:
    """The W3C ``traceparent`` (and ``tracestate``) of ``current``, written directly: the global propagator
    (``opentelemetry.propagate``) costs tens of milliseconds to load, as it scans the installed entry points."""
    context = current.get_span_context()
    if context.is_valid:
        headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()


def set_response(current: Span, status: int, *, challenge: bool = False) -> None:
    """The answer of a client span: ``http.response.status_code``; a status of 400 or more is an error, but for an
    authentication ``challenge``: a 401 that asks a request sent without credentials for them (Key Vault's first
    request in a process), a step of its protocol rather than a failed dependency."""
    current.set_attribute("http.response.status_code", status)
    if status >= 400 and not (challenge and status == 401):
        set_error(current, str(status))


def set_error(current: Span, error_type: str) -> None:
    """Mark the span failed, with ``error.type`` (a status code or a class name, never a message)."""
    if isinstance(current, _QuietSpan):
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR))


def safe_url(url: str) -> str:
    """``url`` for a span: no user info, no fragment, and the value of every query parameter but
    ``api-version`` replaced by ``REDACTED`` (a query may carry an authorization code or a token)."""
    from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    query = "&".join(
        f"{quote(name, safe='$-_.')}={quote(value, safe='-_.') if name.lower() in KEPT_QUERY_PARAMETERS else REDACTED}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class _QuietContext:
    """A span context as W3C trace context carries it (what the API's no-op span keeps of its parent)."""

    def __init__(self, trace_id: int = 0, span_id: int = 0, trace_flags: int = 0, trace_state: str | None = None):
        self.trace_id, self.span_id, self.trace_flags = trace_id, span_id, trace_flags
        self.trace_state = _QuietState(trace_state) if trace_state else None
        self.is_valid = trace_id != 0 and span_id != 0


class _QuietState(str):
    def to_header(self) -> str:
        return str(self)


class _QuietSpan:
    """The span of a process without OpenTelemetry: records nothing and carries its parent's context, as the
    API's no-op span does (so upstream requests and audit records still carry the host's trace)."""

    attributes: Mapping[str, Any] = {}

    def __init__(self, context: _QuietContext | None = None) -> None:
        self._context = context or _QuietContext()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def get_span_context(self) -> _QuietContext:
        return self._context


QUIET: Any = _QuietSpan()
_quiet_current: contextvars.ContextVar[Any] = contextvars.ContextVar("quiet_span", default=QUIET)  # a _QuietSpan
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def quiet() -> bool:
    """Whether spans are quiet (:class:`_QuietSpan`): no test provider, and no tracer provider set in the process
    (nothing has loaded the OpenTelemetry API, or it is loaded and its global provider is still the proxy it hands
    out before one is set), so every span would be the API's no-op one. Checked at each span: a provider set
    later (``configure``) makes the next span a recording one."""
    if _tracer_provider is not None:
        return False
    api = sys.modules.get("opentelemetry.trace")
    return api is None or isinstance(api.get_tracer_provider(), api.ProxyTracerProvider)


class _QuietBlock:
    """A quiet SERVER span's block: ``current`` is the current quiet span inside it."""

    __slots__ = ("_current", "_token")

    def __init__(self, current: Any) -> None:
        self._current = current

    def __enter__(self) -> Any:
        self._token = _quiet_current.set(self._current)
        return self._current

    def __exit__(self, *exc_info: object) -> None:
        _quiet_current.reset(self._token)


def _quiet_parent(traceparent: str | None, tracestate: str | None) -> Any:
    """The host's span as W3C trace context gives it (as the API's propagator reads it), else the current one."""
    match = _TRACEPARENT.fullmatch(traceparent or "")
    if match is None or match[1] == "ff" or (match[1] == "00" and match[5]):
        return _quiet_current.get()
    context = _QuietContext(int(match[2], 16), int(match[3], 16), int(match[4], 16), tracestate)
    return _QuietSpan(context) if context.is_valid else _quiet_current.get()


def current_trace_id() -> str | None:
    """The trace id of the current span, if there is one."""
    if quiet():
        return trace_id(_quiet_current.get())
    from opentelemetry import trace

    return trace_id(trace.get_current_span())


@contextlib.contextmanager
def _recording_span(name: str, attributes: Attributes | None, kind: str, parent: Any = None,
                    qualified_errors: bool = False) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = _get().tracer
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind[kind.upper()], attributes=_clean(attributes or {}),
        record_exception=False, set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as error:
            current.set_attribute("error.type", _error_type(error) if qualified_errors else type(error).__name__)
            if not _has_attribute(current, "outcome"):
                current.set_attribute("outcome", "error")
            current.set_status(Status(StatusCode.ERROR))
            raise


def _error_type(error: BaseException) -> str:
    """A client span's ``error.type``: the qualified class name of what failed. azure-core wraps a transport's
    failure (``ServiceRequestError``, ``ServiceResponseError``) around the one that happened, kept as its
    ``inner_exception``: the cause is named (aiohttp's connector error, a timeout), not the wrapper every transport
    failure shares."""
    inner = getattr(error, "inner_exception", None)
    if isinstance(inner, BaseException) and inner is not error:
        error = inner
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def trace_id(current: Span) -> str | None:
    """The span's trace id as 32 hex digits (what Application Insights calls the operation id), if it has one."""
    context = current.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


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
