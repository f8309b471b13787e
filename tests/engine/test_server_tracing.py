"""`pitstop engine serve --otlp-traces-endpoint`: one `llm_request` span per request, exported to a real
OTLP/HTTP collector, continuing the caller's `traceparent`, with vLLM's attributes (latencies from the
engine's own clock, usage, sampling parameters) and never the prompt's or the answer's text."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from engine.build import build_engine
from engine.server.app import create_app
from gateway.cli import build_parser
from tests.engine.otlp import SERVER, collector, traceparent
from tests.engine.serving import sdk, serve_in_thread

SECRET = "zebracornflakes"  # in every prompt: it must not reach any span


def _ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def test_engine_spans_continue_the_callers_trace_with_vllm_attributes(tiny_model_dir: Path) -> None:
    (whole_trace, whole_parent), (stream_trace, stream_parent), (skip_trace, skip_parent) = _ids(), _ids(), _ids()
    with collector() as (received, endpoint):
        engine = build_engine(tiny_model_dir, num_blocks=64, block_size=16, max_model_len=256)
        with serve_in_thread(create_app(engine, "tiny", otlp_traces_endpoint=endpoint)) as url:
            client = sdk(url)
            whole = client.completions.create(
                model="tiny", prompt=f"The {SECRET} jumps", max_tokens=5, temperature=0.5, top_p=0.9,
                extra_body={"ignore_eos": True}, extra_headers={"traceparent": traceparent(whole_trace, whole_parent)})
            chunks = list(client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Say {SECRET}"}], max_tokens=3, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
                extra_headers={"traceparent": traceparent(stream_trace, stream_parent)}))
            client.completions.create(model="tiny", prompt=f"{SECRET} alone", max_tokens=2)  # no trace sent
            client.completions.create(model="tiny", prompt=SECRET, max_tokens=2,  # the caller chose not to sample
                                      extra_headers={"traceparent": traceparent(skip_trace, skip_parent, False)})
        # The app's shutdown exported what was left.

    span = received.one("llm_request", whole_trace)
    assert span.parent_id == whole_parent and span.kind == SERVER and span.service == "pitstop-engine"
    attributes = span.attributes
    assert whole.usage is not None
    assert attributes["gen_ai.usage.output_tokens"] == attributes["gen_ai.usage.completion_tokens"] == 5
    assert attributes["gen_ai.usage.input_tokens"] == attributes["gen_ai.usage.prompt_tokens"] == whole.usage.prompt_tokens
    assert attributes["gen_ai.request.max_tokens"] == 5 and attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.top_p"] == 0.9 and attributes["gen_ai.response.model"] == "tiny"
    assert attributes["gen_ai.response.id"] == whole.id and attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    queue, ttft = attributes["gen_ai.latency.time_in_queue"], attributes["gen_ai.latency.time_to_first_token"]
    prefill, decode = attributes["gen_ai.latency.time_in_model_prefill"], attributes["gen_ai.latency.time_in_model_decode"]
    assert 0 <= queue <= ttft <= attributes["gen_ai.latency.e2e"]
    assert attributes["gen_ai.latency.time_in_model_inference"] == pytest.approx(prefill + decode)
    assert ttft == pytest.approx(queue + prefill) and decode >= 0
    assert span.start_ns < span.end_ns

    streamed = received.one("llm_request", stream_trace)
    usage = chunks[-1].usage
    assert streamed.parent_id == stream_parent and usage is not None
    assert streamed.attributes["gen_ai.operation.name"] == "chat"
    assert streamed.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens == 3
    assert streamed.attributes["gen_ai.usage.cache_read.input_tokens"] == usage.prompt_tokens_details.cached_tokens

    known = {whole_trace, stream_trace}
    own = [s for s in received.named("llm_request") if s.trace_id not in known]
    assert len(own) == 1 and own[0].parent_id is None  # a request without a traceparent starts its own trace
    assert not received.named("llm_request", skip_trace)  # an unsampled caller's trace is left unrecorded
    assert SECRET not in received.text()


def test_otlp_traces_endpoint_flag(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    serve = ["engine", "serve", "--model", "m"]
    assert parser.parse_args(serve).otlp_traces_endpoint is None
    given = parser.parse_args([*serve, "--otlp-traces-endpoint", "http://collector:4318"]).otlp_traces_endpoint
    assert given == "http://collector:4318/v1/traces"  # a collector's base URL gets OTLP's path
    assert parser.parse_args([*serve, "--otlp-traces-endpoint", "https://c.example/otlp/v1/traces"]
                             ).otlp_traces_endpoint == "https://c.example/otlp/v1/traces"
    with pytest.raises(SystemExit):
        parser.parse_args([*serve, "--otlp-traces-endpoint", "collector:4317"])
    assert "not an OTLP/HTTP endpoint: 'collector:4317'" in capsys.readouterr().err
