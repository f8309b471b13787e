"""An OpenTelemetry collector for the tracing tests: OTLP/HTTP's `POST /v1/traces` on a real socket, its
protobuf `ExportTraceServiceRequest` decoded into plain spans a test can query. It can also hold every
export unanswered (`hang`), a collector that stopped answering."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.engine.serving import serve_in_thread

SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP's Span.SpanKind values
STATUS_ERROR = 2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # hex, as in a traceparent header
    span_id: str
    parent_id: str | None
    kind: int
    attributes: dict[str, Any]
    status: int
    events: tuple[str, ...]
    start_ns: int
    end_ns: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    resource.get("service.name", ""), span.name, span.trace_id.hex(), span.span_id.hex(),
                    span.parent_span_id.hex() or None, span.kind, {a.key: _value(a.value) for a in span.attributes},
                    span.status.code, tuple(e.name for e in span.events), span.start_time_unix_nano,
                    span.end_time_unix_nano))
    return spans


class Collector:
    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.posts = 0
        self.hang = False  # hold each export until `release()`
        self.held = 0  # exports being held now
        self._release = threading.Event()
        self.headers: list[dict[str, str]] = []  # each export's

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.posts += 1
            self.headers.append(dict(request.headers))
        if self.hang:
            with self._lock:
                self.held += 1
            await asyncio.to_thread(self._release.wait)
            with self._lock:
                self.held -= 1
            return Response(status_code=503)
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        spans = decode(body)
        with self._lock:
            self._spans.extend(spans)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def release(self) -> None:
        """Answer the exports held, and take the next ones."""
        self.hang = False
        self._release.set()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def named(self, name: str, trace_id: str | None = None) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name and (trace_id is None or s.trace_id == trace_id)]

    def one(self, name: str, trace_id: str) -> ReceivedSpan:
        found = self.named(name, trace_id)
        assert len(found) == 1, f"expected one {name!r} span in trace {trace_id}, got {found}"
        return found[0]

    def text(self) -> str:
        """Every string the spans carry (names, attribute values): to look for what must never be in them."""
        parts: list[str] = []
        for span in self.spans:
            parts += [span.name, *span.events]
            for value in span.attributes.values():
                parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        return "\n".join(parts)


@contextmanager
def collector() -> Iterator[tuple[Collector, str]]:
    """A collector on a free port, and its traces URL."""
    received = Collector()
    with serve_in_thread(received.app()) as url:
        try:
            yield received, url + "/v1/traces"
        finally:
            received.release()  # held exports answered, or the server would wait for them to stop


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
