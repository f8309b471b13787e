"""One engine request's span, as vLLM records it with --otlp-traces-endpoint: `llm_request`, its latencies
from the engine's own clock (queue, time to first token, prefill, decode, end to end), its usage and its
sampling parameters. Made when the generation ends (OpenAIGeneration.on_end), so a request pays nothing for
it while it runs. Never the prompt or the answer's text."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from engine.outputs import RequestTiming
from engine.tracing import SpanKindName, Tracing

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from engine.openai_generation import OpenAIGeneration

SPAN_NAME = "llm_request"  # vLLM's
log = logging.getLogger("pitstop.engine")


def latencies(timing: RequestTiming) -> dict[str, float]:
    """vLLM's `gen_ai.latency.*` attributes (seconds) from a finished request's times."""
    out = {}
    if timing.first_scheduled is not None:
        out["gen_ai.latency.time_in_queue"] = timing.first_scheduled - timing.arrival
    if timing.first_token is not None:
        out["gen_ai.latency.time_to_first_token"] = timing.first_token - timing.arrival
        if timing.first_scheduled is not None:
            out["gen_ai.latency.time_in_model_prefill"] = timing.first_token - timing.first_scheduled
    if timing.finished is not None:
        out["gen_ai.latency.e2e"] = timing.finished - timing.arrival
        if timing.first_token is not None:
            out["gen_ai.latency.time_in_model_decode"] = timing.finished - timing.first_token
        if timing.first_scheduled is not None:
            out["gen_ai.latency.time_in_model_inference"] = timing.finished - timing.first_scheduled
    return out


class RequestSpan:
    """Records the span of one generation under `parent` (the trace its caller sent, or the gateway's
    span of the call) once it ends: made when the request arrived, called with the generation and the
    error it ended with (None: it finished; a cancellation: the caller left)."""

    def __init__(self, tracing: Tracing, parent: Context | Span | None, kind: SpanKindName = "server") -> None:
        self.tracing = tracing
        self.parent = parent
        self.kind: SpanKindName = kind
        self.start_ns = time.time_ns()

    def __call__(self, generation: OpenAIGeneration, error: BaseException | None) -> None:
        end_ns = time.time_ns()
        try:
            span = self.tracing.start(SPAN_NAME, self.parent, self.kind, _attributes(generation), self.start_ns)
            if isinstance(error, asyncio.CancelledError | GeneratorExit):
                span.set_attribute("pitstop.aborted", True)  # the client left: not the engine's error
            elif error is not None:
                self.tracing.fail(span, getattr(error, "code", None) or type(error).__name__, str(error)[:500])
            span.end(end_time=end_ns)
        except Exception:  # a span is never worth a request
            log.exception("recording the span of %s failed", generation.shapes.id)


def _attributes(generation: OpenAIGeneration) -> dict[str, Any]:
    parsed, params, last = generation.parsed, generation.parsed.params, generation.last
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if generation.shapes.chat else "text_completion",
        "gen_ai.request.id": generation.shapes.id,  # vLLM's name
        "gen_ai.response.id": generation.shapes.id,
        "gen_ai.request.model": parsed.model,
        "gen_ai.response.model": generation.shapes.model,
        "gen_ai.request.temperature": params.temperature,
        "gen_ai.request.top_p": params.top_p,
        "gen_ai.request.n": parsed.n,
        "gen_ai.usage.num_sequences": parsed.num_choices,
    }
    if parsed.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = parsed.max_tokens
    if generation.lora is not None:
        attributes["pitstop.lora"] = generation.lora
    if last is None:
        if generation.ttft_s is not None:  # cut before its end: what is known without the engine's times
            attributes["gen_ai.latency.time_to_first_token"] = generation.ttft_s
        return attributes
    attributes |= {
        # The current semantic conventions' names, and vLLM's (its dashboards read those).
        "gen_ai.usage.input_tokens": last.num_prompt_tokens,
        "gen_ai.usage.output_tokens": last.num_output_tokens,
        "gen_ai.usage.prompt_tokens": last.num_prompt_tokens,
        "gen_ai.usage.completion_tokens": last.num_output_tokens,
        "gen_ai.usage.cache_read.input_tokens": last.num_cached_tokens,
    }
    if last.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [last.finish_reason]
    if last.timing is not None:
        attributes |= latencies(last.timing)
        attributes["pitstop.preemptions"] = last.timing.preemptions
    elif generation.ttft_s is not None:
        attributes["gen_ai.latency.time_to_first_token"] = generation.ttft_s
    return attributes
