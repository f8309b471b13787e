"""Trace-driven simulation: timed arrivals into an LLMEngine on a virtual clock.

The engine, scheduler and block manager are the real ones; only the runner is simulated, so
queueing, batching, chunked prefill, prefix hits and preemption behave as they would when served."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.clock import VirtualClock
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.policy import SchedulingPolicy
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.sequence import Sequence
from engine.sim_runner import SimulatedRunner
from engine.step_time import LinearStepTime, StepTimeModel, load_profile

# GPU-scale batching limits (vLLM's defaults for online serving on H100-class GPUs) where the
# caller gives none; EngineConfig's own defaults suit the small CPU engine.
SIM_CONFIG_DEFAULTS: dict = {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 32768}


@dataclass(frozen=True)
class Arrival:
    """One request of a workload. Set `params.max_tokens` to the true output length: the simulated
    runner never samples EOS, so every request produces exactly max_tokens tokens."""

    arrival_time: float
    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str | None = None  # default: "r<index in the arrivals>"
    priority: float = 0.0
    session_id: str | None = None
    pin_ttl_s: float | None = None


@dataclass(frozen=True)
class RequestResult:
    request_id: str
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    finish_time: float | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    num_preemptions: int
    finish_reason: str | None  # "length", "stop", or "rejected" (never admitted, e.g. too long)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def latency(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.finish_time is None or self.first_token_time is None or self.num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)

    @classmethod
    def of(cls, seq: Sequence) -> RequestResult:
        return cls(seq.request_id, seq.arrival_time, seq.first_scheduled_time, seq.first_token_time,
                   seq.finish_time, seq.num_prompt_tokens, seq.num_output_tokens, seq.num_cached_tokens,
                   seq.num_preemptions, seq.finish_reason)


def simulate(engine: LLMEngine, arrivals: Iterable[Arrival]) -> list[RequestResult]:
    """Run `arrivals` (sorted by time; a generator keeps memory flat on long traces) to completion
    on the engine's virtual clock; returns one result per arrival, in arrival order. Requests that
    arrive during a step join at its end, as they would on a real server."""
    clock = engine.clock
    if not isinstance(clock, VirtualClock):
        raise TypeError("simulate() needs an engine on a VirtualClock (see make_sim_engine)")
    pending = iter(arrivals)
    upcoming = next(pending, None)
    results: list[RequestResult | None] = []
    in_flight: dict[str, tuple[int, Sequence]] = {}  # held only until finished, then dropped
    last_arrival = float("-inf")
    while True:
        now = clock.now()
        while upcoming is not None and upcoming.arrival_time <= now:
            if upcoming.arrival_time < last_arrival:
                raise ValueError("arrivals must be sorted by arrival_time")
            last_arrival = upcoming.arrival_time
            _admit(engine, upcoming, results, in_flight)
            upcoming = next(pending, None)
        if not engine.has_unfinished():
            if upcoming is None:
                break
            clock.advance_to(upcoming.arrival_time)  # idle: jump the gap
            continue
        steps_before = engine.num_steps
        for output in engine.step():
            if output.finished:
                index, seq = in_flight.pop(output.request_id)
                results[index] = RequestResult.of(seq)
        if engine.num_steps == steps_before:
            clock.advance_to(_next_wake(engine, upcoming, now))
    assert not in_flight
    return [r for r in results if r is not None]


def _admit(engine: LLMEngine, arrival: Arrival, results: list[RequestResult | None],
           in_flight: dict[str, tuple[int, Sequence]]) -> None:
    index = len(results)
    request_id = arrival.request_id or f"r{index}"
    try:
        seq = engine.add_request(request_id, arrival.prompt_token_ids, arrival.params,
                                 priority=arrival.priority, session_id=arrival.session_id,
                                 pin_ttl_s=arrival.pin_ttl_s, arrival_time=arrival.arrival_time)
    except InvalidRequestError:
        results.append(RequestResult(request_id, arrival.arrival_time, None, None, None,
                                     len(arrival.prompt_token_ids), 0, 0, 0, "rejected"))
        return
    results.append(None)
    in_flight[request_id] = (index, seq)


def _next_wake(engine: LLMEngine, upcoming: Arrival | None, now: float) -> float:
    """Nothing could be scheduled (memory held by pins or too full): the next event that can help."""
    pin = engine.block_manager.pins.earliest()
    candidates = [t for t in (upcoming and upcoming.arrival_time, pin and pin.deadline) if t is not None]
    if not candidates:
        raise RuntimeError(f"simulation stuck at t={now:.3f}s: {len(engine.scheduler)} requests cannot be "
                           "scheduled and nothing will free memory")
    return min(candidates)


def make_sim_engine(profile_or_model: StepTimeModel | str | Path, num_blocks: int | None = None,
                    block_size: int = 16, policy: SchedulingPolicy | None = None, *,
                    vocab_size: int | None = None, eos_token_ids: tuple[int, ...] = (),
                    record_steps: bool = False, **config) -> LLMEngine:
    """An LLMEngine with a SimulatedRunner on a fresh VirtualClock. `profile_or_model` is a step-time
    model or a profile file path. Without `num_blocks`, the KV capacity comes from the model: the
    roofline's GPU memory, or the `num_blocks`/`block_size` recorded in a linear profile. `config`
    goes to EngineConfig, over SIM_CONFIG_DEFAULTS."""
    model = load_profile(profile_or_model) if isinstance(profile_or_model, str | Path) else profile_or_model
    if num_blocks is None:
        num_blocks = _default_num_blocks(model, block_size)
    clock = VirtualClock()
    runner = SimulatedRunner(model, clock, vocab_size or _vocab_size(model), eos_token_ids)
    engine_config = EngineConfig(block_size=block_size, num_blocks=num_blocks, **(SIM_CONFIG_DEFAULTS | config))
    return LLMEngine(engine_config, runner, clock, policy, record_steps=record_steps)


def _default_num_blocks(model: StepTimeModel, block_size: int) -> int:
    capacity = getattr(model, "kv_capacity_blocks", None)
    if capacity is not None:  # a roofline knows its GPU
        return capacity(block_size)
    info = model.model if isinstance(model, LinearStepTime) else {}
    if "num_blocks" in info:
        return info["num_blocks"] * info.get("block_size", block_size) // block_size
    raise ValueError("this step-time model does not say how much KV fits; pass num_blocks")


def _vocab_size(model: StepTimeModel) -> int:
    shape = getattr(model, "model", None)
    vocab = shape.get("vocab_size") if isinstance(shape, dict) else getattr(shape, "vocab_size", None)
    return vocab or 32000
