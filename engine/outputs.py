from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.batch import StepShape
from engine.logprobs import TokenLogprobs

if TYPE_CHECKING:
    from engine.block_manager import BlockStats
    from engine.pins import PinCounters
    from engine.speculation import SpeculationCounters


@dataclass(frozen=True)
class RequestTiming:
    """When a finished request arrived, was first scheduled, made its first token and finished, on the
    engine's clock (vLLM's request stats): for its durations, not wall times. The tracing span reads it."""

    arrival: float
    first_scheduled: float | None
    first_token: float | None
    finished: float | None
    preemptions: int = 0


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprobs] | None = None  # for new_token_ids, where the request asked
    # On a request's first output, where it asked: prompt tokens 1.. (the first token has none).
    prompt_logprobs: list[TokenLogprobs] | None = None
    # With SamplingParams.embed, on its one output: the prompt's embedding (engine/torch_runner.py).
    embedding: list[float] | None = None
    timing: RequestTiming | None = None  # on a request's finished output (engine/async_engine.py)

    def followed_by(self, later: RequestOutput) -> RequestOutput:
        """This output and the next one of the same request as one (a step that yields several tokens)."""
        logprobs = None if self.logprobs is None and later.logprobs is None else \
            [*(self.logprobs or ()), *(later.logprobs or ())]
        return RequestOutput(self.request_id, self.new_token_ids + later.new_token_ids,
                             self.text_delta + later.text_delta, later.finished, later.finish_reason,
                             later.num_prompt_tokens, later.num_cached_tokens, later.num_output_tokens,
                             logprobs, self.prompt_logprobs, timing=later.timing)


@dataclass(frozen=True)
class StepRecord:
    """One step's shape and measured (or modelled) duration: the profile's raw data."""

    shape: StepShape
    duration_s: float


@dataclass(frozen=True)
class EngineStats:
    blocks: BlockStats
    block_size: int
    num_running: int
    num_waiting: int
    num_preemptions: int
    num_steps: int
    prefill_tokens: int  # tokens computed in prefill (cache hits excluded, recomputes included)
    generation_tokens: int
    pins: PinCounters
    spec: SpeculationCounters
    kv_cache_dtype: str = "auto"  # how the runner stores KV (engine/config.py KV_CACHE_DTYPES)
    num_loras: int = 0  # LoRA adapters loaded
    quantization: str | None = None  # the runner's W8A8 or W4A16 projections (engine/model/quant_config.py), if any
    tensor_parallel_size: int = 1  # ranks the model is sharded over (engine/model/parallel.py)
