"""OpenTelemetry tracing, shared by the gateway and the engine server: a tracer provider that exports
OTLP/HTTP in batches from its own thread (a request never waits on the collector, and a collector that is
down only loses spans), W3C trace context read from requests and written onto calls, and `Traced`, the span
a call is made under. opentelemetry is imported only when a `Tracing` is made: off, tracing costs nothing,
not even the import."""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path for spans
EXPORT_TIMEOUT_S = 5.0  # an export's wait for the collector, retries included, unless TIMEOUT_ENV says (the exporter's: 10)
TIMEOUT_ENV = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
SHUTDOWN_WAIT_S = 5.0  # at shutdown, how long the last spans may take to go out
SpanKindName = Literal["server", "client", "internal"]


def traces_endpoint(url: str) -> str:
    """An OTLP/HTTP traces URL as given, or with OTLP's `/v1/traces` where it names no path (a collector's
    base URL, `http://collector:4318`); a ValueError saying what is wrong otherwise."""
    text = url.strip()
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018  (reading it checks it)
    except ValueError:
        raise ValueError(f"not an OTLP/HTTP endpoint: {url!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an OTLP/HTTP endpoint: {url!r} (expected e.g. http://collector:4318/v1/traces)")
    return urlunsplit(parts._replace(path=TRACES_PATH)) if parts.path in ("", "/") else text


def endpoint_argument(text: str) -> str:
    """`--otlp-traces-endpoint`'s type: the URL, or argparse's error naming what is wrong."""
    try:
        return traces_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def endpoint_from_env() -> str | None:
    """OpenTelemetry's standard variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else
    OTEL_EXPORTER_OTLP_ENDPOINT (a base URL) with /v1/traces; None when neither is set."""
    if traces := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return base.rstrip("/") + TRACES_PATH
    return None


class Tracing:
    """One tracer provider: spans sampled at `sample_ratio` (a parent's decision is kept, so a client's
    sampled trace stays whole), batched and exported to `endpoint` off the request path. Resource
    attributes also come from OTEL_RESOURCE_ATTRIBUTES; the exporter reads OTEL_EXPORTER_OTLP_TRACES_HEADERS
    and _TIMEOUT, the batch processor OTEL_BSP_* (how often it exports, how many spans it may hold)."""

    def __init__(self, endpoint: str, service_name: str, sample_ratio: float = 1.0,
                 headers: Mapping[str, str] | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.endpoint = traces_endpoint(endpoint)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
        exporter = OTLPSpanExporter(endpoint=self.endpoint, headers=dict(headers) if headers else None,
                                    timeout=None if os.environ.get(TIMEOUT_ENV) else EXPORT_TIMEOUT_S)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("pitstop")
        self._propagator = TraceContextTextMapPropagator()
        self._in_context = trace.set_span_in_context
        self._span_class = trace.Span
        self._kinds = {"server": trace.SpanKind.SERVER, "client": trace.SpanKind.CLIENT,
                       "internal": trace.SpanKind.INTERNAL}
        self._error = trace.StatusCode.ERROR
        self._status = trace.Status

    def continued(self, headers: Mapping[str, str]) -> Context:
        """The trace a request's `traceparent` (and `tracestate`) header names, or a new one's root."""
        return self._propagator.extract(headers)

    def start(self, name: str, parent: Context | Span | None, kind: SpanKindName = "internal",
              attributes: Mapping[str, Any] | None = None, start_time: int | None = None) -> Span:
        """A span under `parent` (a context, a span, or None for a root), ended by the caller."""
        if isinstance(parent, self._span_class):
            parent = self._in_context(parent)
        return self.tracer.start_span(name, context=parent, kind=self._kinds[kind], attributes=attributes,
                                      start_time=start_time)

    def headers(self, span: Span) -> dict[str, str]:
        """The W3C headers (`traceparent`, `tracestate`) that make a call's server span a child of `span`."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._in_context(span))
        return carrier

    def fail(self, span: Span, error_type: str, message: str | None = None) -> None:
        """OpenTelemetry's error marking: status ERROR (with `message`) and `error.type`."""
        span.set_attribute("error.type", error_type)
        span.set_status(self._status(self._error, message))

    def flush(self, timeout_s: float = SHUTDOWN_WAIT_S) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> None:
        """Export what is left, waiting at most `timeout_s` (a collector that is down would hold a
        shutdown for its export's timeout and retries)."""
        closing = threading.Thread(target=self.provider.shutdown, name="pitstop-tracing-shutdown", daemon=True)
        closing.start()
        closing.join(timeout_s)


@dataclass(frozen=True)
class Traced:
    """The span a call is made under, and the tracing it belongs to: over HTTP the call carries
    `headers()`; in process (an engine in the gateway) its span is made under `span` directly.
    `reason` says why the call is made where it is not the first try (a fallback), for its span."""

    tracing: Tracing
    span: Span
    reason: str | None = None

    def headers(self) -> dict[str, str]:
        return self.tracing.headers(self.span)
