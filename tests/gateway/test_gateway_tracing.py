"""OpenTelemetry tracing (`tracing:`, gateway/tracing.py), against a real OTLP/HTTP collector on a socket:
the gateway's server span continues a client's traceparent, its routing, upstream-attempt and first-token
spans sit under it, and the engine's own span (in process, or `pitstop engine serve` reached over HTTP)
under the attempt; upstreams get the traceparent (direct and through litellm); a failed attempt and a
failed request are marked ERROR; a collector that is down or hangs fails and holds up no request; no
prompt text reaches a span; a bad section is a clear config error; off, nothing of OpenTelemetry's SDK
is even imported."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.build import build_engine
from engine.server.app import create_app
from engine.tiny_model import make_tiny_model
from gateway.config import ConfigError, parse_settings
from gateway.tracing import build_tracing
from tests.engine.otlp import (
    CLIENT,
    INTERNAL,
    SERVER,
    STATUS_ERROR,
    Collector,
    ReceivedSpan,
    collector,
    traceparent,
)
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import REPO_ROOT, gateway_config, model_entry, running_gateway, wait_until
from tests.storage.pg_cluster import free_port

SECRET = "zebracornflakes"  # in every prompt: it must not reach any span
NO_EOS = {"ignore_eos": True}


def _ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def _children(received: Collector, parent: ReceivedSpan, name: str | None = None) -> list[ReceivedSpan]:
    return [s for s in received.spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id
            and (name is None or s.name == name)]


def _server_span(received: Collector, trace_id: str) -> ReceivedSpan:
    spans = [s for s in received.spans if s.trace_id == trace_id and s.kind == SERVER and s.service == "gw"]
    assert len(spans) == 1, spans
    return spans[0]


def test_one_trace_from_client_to_engine_in_process_and_over_http(tmp_path: Path) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")
    local = {"model_name": "local", "litellm_params": {"model": "pitstop-local/local", "model_dir": str(tiny),
                                                       "num_blocks": 64, "max_model_len": 256}}
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: every call to it fails
    (whole_trace, whole_parent), (stream_trace, stream_parent), (fell_trace, fell_parent) = _ids(), _ids(), _ids()
    (failed_trace, failed_parent), (skip_trace, skip_parent), (unknown_trace, unknown_parent) = _ids(), _ids(), _ids()
    with collector() as (received, endpoint):
        engine = build_engine(tiny, num_blocks=64, block_size=16, max_model_len=256)
        with serve_in_thread(create_app(engine, "remote", otlp_traces_endpoint=endpoint)) as engine_url:
            raw = gateway_config(
                tmp_path, [local, model_entry("remote", f"{engine_url}/v1"), model_entry("down", dead),
                           model_entry("gone", dead)],
                [{"name": "auto", "models": ["local"], "router": "tier-prior"}],
                fallbacks={"on_error": {"down": ["local"]}},
                tracing={"otlp_endpoint": endpoint, "service_name": "gw", "headers": {"x-collector-key": "k1"}})
            with running_gateway(raw) as gateway, gateway.openai() as client:
                whole = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"Where is the {SECRET}?"}], max_tokens=4,
                    temperature=0.7, extra_body=NO_EOS,
                    extra_headers={"traceparent": traceparent(whole_trace, whole_parent)})
                chunks = list(client.chat.completions.create(
                    model="remote", messages=[{"role": "user", "content": f"Say {SECRET}"}], max_tokens=3,
                    stream=True, stream_options={"include_usage": True}, extra_body=NO_EOS,
                    extra_headers={"traceparent": traceparent(stream_trace, stream_parent)}))
                fell = client.chat.completions.create(
                    model="down", messages=[{"role": "user", "content": SECRET}], max_tokens=2,
                    extra_headers={"traceparent": traceparent(fell_trace, fell_parent)})
                with pytest.raises(openai.APIStatusError) as failed:
                    client.chat.completions.create(
                        model="gone", messages=[{"role": "user", "content": SECRET}], max_tokens=2,
                        extra_headers={"traceparent": traceparent(failed_trace, failed_parent)})
                with pytest.raises(openai.NotFoundError):
                    client.chat.completions.create(
                        model="nope", messages=[{"role": "user", "content": SECRET}],
                        extra_headers={"traceparent": traceparent(unknown_trace, unknown_parent)})
                client.chat.completions.create(model="local", messages=[{"role": "user", "content": SECRET}],
                                               max_tokens=2)
                client.chat.completions.create(  # a client that samples its trace out
                    model="local", messages=[{"role": "user", "content": SECRET}], max_tokens=2,
                    extra_headers={"traceparent": traceparent(skip_trace, skip_parent, sampled=False)})
            # Both shutdowns exported what was left.

    # A whole answer through a route group, from an engine in the gateway's process.
    server = _server_span(received, whole_trace)
    answer = whole.parse()
    assert server.parent_id == whole_parent and server.name == "POST /v1/chat/completions"
    attributes = server.attributes
    assert attributes["pitstop.request_id"] == whole.headers["x-pitstop-request-id"]
    assert attributes["gen_ai.request.model"] == "auto" and attributes["gen_ai.response.model"] == "local"
    assert attributes["pitstop.route_group"] == "auto" and attributes["gen_ai.operation.name"] == "chat"
    assert answer.usage is not None and attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens == 4
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.request.max_tokens"] == 4 and attributes["gen_ai.request.temperature"] == 0.7
    assert attributes["http.response.status_code"] == 200 and server.status != STATUS_ERROR
    (route,) = _children(received, server, "route")
    assert route.attributes["pitstop.router.name"] == "tier-prior" and route.attributes["pitstop.model"] == "local"
    assert route.attributes["pitstop.router.predicted_quality"] > 0
    (attempt,) = _children(received, server, "chat local")
    assert attempt.kind == CLIENT and attempt.attributes["pitstop.deployment"] == "local#0"
    assert attempt.attributes["gen_ai.provider.name"] == "pitstop" and attempt.attributes["pitstop.attempt"] == 1
    (in_process,) = _children(received, attempt, "llm_request")
    assert in_process.kind == INTERNAL and in_process.service == "gw"
    assert in_process.attributes["gen_ai.usage.output_tokens"] == 4
    assert 0 <= in_process.attributes["gen_ai.latency.time_in_queue"] <= in_process.attributes["gen_ai.latency.e2e"]
    assert server.start_ns <= route.start_ns <= route.end_ns <= attempt.start_ns <= attempt.end_ns <= server.end_ns

    # A stream to `pitstop engine serve`: its span comes from that server, under the gateway's attempt.
    server = _server_span(received, stream_trace)
    (attempt,) = _children(received, server, "chat remote")
    assert "gen_ai.first_chunk" in attempt.events and attempt.attributes["gen_ai.provider.name"] == "pitstop"
    (remote,) = _children(received, attempt, "llm_request")
    assert remote.service == "pitstop-engine" and remote.kind == SERVER
    assert remote.attributes["gen_ai.usage.output_tokens"] == chunks[-1].usage.completion_tokens == 3  # type: ignore[union-attr]
    (first,) = _children(received, server, "time_to_first_token")
    assert server.start_ns <= first.end_ns <= server.end_ns and server.attributes["pitstop.stream"] is True
    assert server.attributes["gen_ai.latency.time_to_first_token"] > 0

    # A fallback: the first model's attempt failed, the chain's next answered.
    server = _server_span(received, fell_trace)
    assert fell.model and server.attributes["pitstop.fallback_from"] == "down" and server.status != STATUS_ERROR
    (down,) = _children(received, server, "chat down")
    assert down.status == STATUS_ERROR and down.attributes["error.type"] == "502"
    (rescue,) = _children(received, server, "chat local")
    assert rescue.attributes["pitstop.attempt.reason"] == "fallback (error) from down"
    assert _children(received, rescue, "llm_request")

    # A request that failed: ERROR, with the error's type, on the attempt and on the request.
    server = _server_span(received, failed_trace)
    assert failed.value.status_code == 502 and server.status == STATUS_ERROR
    assert server.attributes["error.type"] == "502" and server.attributes["http.response.status_code"] == 502
    assert [s.status for s in _children(received, server, "chat gone")] == [STATUS_ERROR]

    # A model that does not exist: the routing step failed, and with it the request.
    server = _server_span(received, unknown_trace)
    (route,) = _children(received, server, "route")
    assert route.status == server.status == STATUS_ERROR and route.attributes["error.type"] == "model_not_found"
    assert server.attributes["error.type"] == "model_not_found" and server.attributes["http.response.status_code"] == 404
    assert not _children(received, server, "chat nope")

    roots = [s for s in received.spans if s.service == "gw" and s.kind == SERVER and s.parent_id is None]
    assert len(roots) == 1  # the request that sent no traceparent began a trace of its own
    assert not [s for s in received.spans if s.trace_id == skip_trace]  # nor engine's nor gateway's
    assert SECRET not in received.text()
    assert any(h.get("x-collector-key") == "k1" for h in received.headers)  # the gateway's exports carry `headers`


class RecordingUpstream:
    """An OpenAI-compatible upstream that keeps each request's headers: a one-word answer, whole or streamed."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.headers.append(dict(request.headers))
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        envelope = {"id": "chatcmpl-rec", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            return JSONResponse(envelope | {"object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})

        async def events() -> AsyncIterator[bytes]:
            chunk = envelope | {"object": "chat.completion.chunk"}
            for choice in ({"delta": {"role": "assistant", "content": "ok"}, "finish_reason": None},
                           {"delta": {}, "finish_reason": "stop"}):
                yield b"data: " + json.dumps(chunk | {"choices": [{"index": 0, **choice}]}).encode() + b"\n\n"
            yield b"data: " + json.dumps(chunk | {"choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


@contextmanager
def recording_upstream() -> Iterator[tuple[RecordingUpstream, str]]:
    upstream = RecordingUpstream()
    with serve_in_thread(upstream.app()) as url:
        yield upstream, url + "/v1"


def test_upstreams_get_the_attempts_traceparent_directly_and_through_litellm(tmp_path: Path) -> None:
    with collector() as (received, endpoint), recording_upstream() as (upstream, base):
        models = [model_entry("direct", base, provider="hosted_vllm", transport="direct"),
                  model_entry("via-litellm", base, provider="hosted_vllm")]  # the harness sends it through litellm
        raw = gateway_config(tmp_path, models, tracing={"otlp_endpoint": endpoint, "service_name": "gw"})
        traces = {}
        with running_gateway(raw) as gateway, gateway.openai() as client:
            for model in ("direct", "via-litellm"):
                trace_id, parent = traces[model] = _ids()
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": SECRET}],
                                               extra_headers={"traceparent": traceparent(trace_id, parent)})
    sent = [h["traceparent"] for h in upstream.headers]
    assert len(sent) == 2
    for model, header in zip(("direct", "via-litellm"), sent, strict=True):
        trace_id, _ = traces[model]
        (attempt,) = _children(received, _server_span(received, trace_id), f"chat {model}")
        assert header == traceparent(trace_id, attempt.span_id)  # the upstream's span goes under the attempt
        assert attempt.attributes["gen_ai.provider.name"] == "vllm"


def test_a_collector_that_is_down_or_hangs_fails_and_holds_up_no_request(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # export at once: the exporter is busy while we ask
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # how long the shutdown tries the last spans
    messages = [{"role": "user", "content": "hello"}]
    with collector() as (received, endpoint), recording_upstream() as (upstream, base):
        received.hang = True  # takes each export and never answers it
        dead = f"http://127.0.0.1:{free_port()}/v1/traces"  # refuses every connection
        for i, where in enumerate((endpoint, dead)):
            (tmp_path / str(i)).mkdir()
            models = [model_entry("m", base, provider="hosted_vllm", transport="direct")]
            raw = gateway_config(tmp_path / str(i), models, tracing={"otlp_endpoint": where})
            with running_gateway(raw) as gateway, gateway.openai() as client:
                assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content == "ok"
                if where == endpoint:  # the exporter's thread now waits on the collector...
                    wait_until(lambda: received.held >= 1, what="an export held by the collector")
                for _ in range(3):  # ...and requests, whole and streamed, are answered meanwhile
                    assert client.chat.completions.create(model="m", messages=messages).choices[0].finish_reason == "stop"
                    streamed = list(client.chat.completions.create(model="m", messages=messages, stream=True))
                    assert streamed[-1].choices[0].finish_reason == "stop"
                if where == endpoint:
                    assert received.held >= 1  # still held: none of them waited for it
                    received.release()
    assert len(upstream.headers) == 14 and all("traceparent" in h for h in upstream.headers)


def test_tracing_config_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME",
                 "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    models = [model_entry("m", "http://127.0.0.1:1/v1")]

    def settings(tracing: object) -> object:
        return parse_settings(gateway_config(tmp_path, models, tracing=tracing)).tracing

    for tracing, message in (
            ({"otlp_endpoint": "http://c:4318", "sampel_ratio": 0.5}, "tracing.sampel_ratio: Extra inputs are not permitted"),
            ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint: Value error, not an OTLP/HTTP endpoint"),
            ({"otlp_endpoint": "http://c:99999"}, "has a bad port"),
            ({"otlp_endpoint": "http://c:4318", "sample_ratio": 1.5}, "tracing.sample_ratio: Input should be less"),
            ({}, "tracing.otlp_endpoint is not set, nor is OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            ("yes", "tracing: Input should be a valid dictionary")):
        with pytest.raises(ConfigError, match="invalid config: ") as refused:
            settings(tracing)
        assert message in str(refused.value), str(refused.value)

    assert settings(None) is None and build_tracing(None) is None  # absent: off
    configured = settings({"otlp_endpoint": "http://c:4318/"})
    assert configured.otlp_endpoint == "http://c:4318/v1/traces" and configured.service_name == "pitstop-gateway"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://envhost:4318")  # OpenTelemetry's variables
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gw")
    from_env = settings({})
    assert (from_env.otlp_endpoint, from_env.service_name, from_env.sample_ratio) == (
        "http://envhost:4318/v1/traces", "edge-gw", 1.0)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces")
    assert settings({"sample_ratio": 0.1}).otlp_endpoint == "http://traces:4318/v1/traces"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert build_tracing(settings({})) is None


def test_tracing_off_imports_nothing_of_the_sdk() -> None:
    code = ("import sys, gateway.dispatch, gateway.outcomes, gateway.backends.local, gateway.backends.openai_http, "
            "engine.server.generation; "
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
