"""Trace-driven simulation: timed arrivals into an LLMEngine on a virtual clock.

The engine, scheduler and block manager are the real ones; only the runner is simulated, so
queueing, batching, chunked prefill, prefix hits and preemption behave as they would when served."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.clock import VirtualClock
from engine.config import EngineConfig
from engine.hints import NO_HINTS, SchedulingHints
from engine.llm_engine import LLMEngine
from engine.policy import SchedulingPolicy
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.sequence import Sequence
from engine.sim_runner import SimulatedRunner
from engine.step_time import LinearStepTime, StepTimeModel, load_profile

# GPU-scale batching limits where the caller gives none (vLLM's long-standing max_num_seqs of 256 and
# its V1 per-step token budget for serving on H100-class GPUs); EngineConfig's suit the CPU engine.
SIM_CONFIG_DEFAULTS: dict[str, int] = {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 32768}


@dataclass(frozen=True)
class Arrival:
    """One request of a workload. Set `params.max_tokens` to the true output length: the simulated
    runner never samples EOS, so every request produces exactly max_tokens tokens. With
    `output_token_ids` (a real output, replayed) those are the tokens it writes: speculative decoding
    then accepts the drafts real decoding would."""

    arrival_time: float
    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str | None = None  # default: "r<index in the arrivals>"
    priority: float = 0.0
    session_id: str | None = None
    pin_ttl_s: float | None = None
    hints: SchedulingHints = NO_HINTS
    output_token_ids: list[int] | None = None


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
    error: str | None = None  # why it was rejected

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


FollowUps = Callable[[RequestResult, list[int]], Iterable[Arrival]]


def simulate(engine: LLMEngine, arrivals: Iterable[Arrival], on_finish: FollowUps | None = None
             ) -> list[RequestResult]:
    """Run `arrivals` (sorted by time; a generator keeps memory flat on long traces) to completion
    on the engine's virtual clock; returns one result per request, in the order they arrived.
    Requests that arrive during a step join at its end, as they would on a real server.

    `on_finish(result, token_ids)` makes a closed loop: called as each request finishes, with its
    prompt and output token ids, it returns follow-up arrivals (the next turn of an agent session,
    at finish time plus think time). The simulated runner's outputs are deterministic, so a next
    turn that extends `token_ids` hits the prefix cache as it would when served."""
    clock = engine.clock
    if not isinstance(clock, VirtualClock):
        raise TypeError("simulate() needs an engine on a VirtualClock (see make_sim_engine)")
    forget = getattr(engine.runner, "forget", None)  # a simulated runner's scripts
    stream = _ArrivalStream(arrivals)
    results: list[RequestResult | None] = []
    in_flight: dict[str, tuple[int, Sequence]] = {}  # held only until finished, then dropped
    while True:
        now = clock.now()
        while (t := stream.next_time()) is not None and t <= now:
            _admit(engine, stream.pop(), results, in_flight)
        if not engine.has_unfinished():
            if t is None:
                break
            clock.advance_to(t)  # idle: jump the gap
            continue
        steps_before = engine.num_steps
        horizon = stream.next_time()
        for output in engine.step(math.inf if horizon is None else horizon):
            if output.finished:
                index, seq = in_flight.pop(output.request_id)
                if forget is not None:
                    forget(output.request_id)
                results[index] = result = RequestResult.of(seq)
                if on_finish is not None:
                    for follow_up in on_finish(result, seq.token_ids):
                        stream.push(follow_up, not_before=clock.now())
        if engine.num_steps == steps_before:
            clock.advance_to(_next_wake(engine, stream.next_time(), now))
    assert not in_flight and all(r is not None for r in results)
    return results  # type: ignore[return-value]


class _ArrivalStream:
    """The trace's arrivals, read lazily, merged with follow-ups pushed as requests finish."""

    def __init__(self, arrivals: Iterable[Arrival]) -> None:
        self._trace = iter(arrivals)
        self._head = next(self._trace, None)
        self._follow_ups: list[tuple[float, int, Arrival]] = []  # heap by time, then push order
        self._pushed = 0

    def next_time(self) -> float | None:
        head = None if self._head is None else self._head.arrival_time
        if self._follow_ups and (head is None or self._follow_ups[0][0] < head):
            return self._follow_ups[0][0]
        return head

    def pop(self) -> Arrival:
        if self._head is not None and (not self._follow_ups or self._head.arrival_time <= self._follow_ups[0][0]):
            arrival, self._head = self._head, next(self._trace, None)
            if self._head is not None and self._head.arrival_time < arrival.arrival_time:
                raise ValueError("arrivals must be sorted by arrival_time")
            return arrival
        return heapq.heappop(self._follow_ups)[2]

    def push(self, arrival: Arrival, not_before: float) -> None:
        if arrival.arrival_time < not_before:
            raise ValueError(f"a follow-up cannot arrive ({arrival.arrival_time}) before the request it "
                             f"follows finished ({not_before})")
        self._pushed += 1
        heapq.heappush(self._follow_ups, (arrival.arrival_time, self._pushed, arrival))


def _admit(engine: LLMEngine, arrival: Arrival, results: list[RequestResult | None],
           in_flight: dict[str, tuple[int, Sequence]]) -> None:
    index = len(results)
    request_id = arrival.request_id or f"r{index}"
    if arrival.output_token_ids is not None and not isinstance(engine.runner, SimulatedRunner):
        raise TypeError("only a simulated runner replays output_token_ids")
    try:
        seq = engine.add_request(request_id, arrival.prompt_token_ids, arrival.params,
                                 priority=arrival.priority, session_id=arrival.session_id,
                                 pin_ttl_s=arrival.pin_ttl_s, arrival_time=arrival.arrival_time,
                                 hints=arrival.hints)
    except InvalidRequestError as error:
        results.append(RequestResult(request_id, arrival.arrival_time, None, None, None,
                                     len(arrival.prompt_token_ids), 0, 0, 0, "rejected", str(error)))
        return
    results.append(None)
    in_flight[request_id] = (index, seq)
    if arrival.output_token_ids is not None:
        engine.runner.script(request_id, arrival.output_token_ids)  # type: ignore[attr-defined]


def _next_wake(engine: LLMEngine, next_arrival: float | None, now: float) -> float:
    """Nothing could be scheduled: jump to the next event that can change that, rather than spin."""
    candidates = [t for t in (next_arrival, engine.next_event_time()) if t is not None]
    if not candidates:
        raise RuntimeError(f"simulation stuck at t={now:.3f}s: {len(engine.scheduler)} requests cannot be "
                           "scheduled and nothing will free memory")
    return min(candidates)


def make_sim_engine(profile_or_model: StepTimeModel | str | Path, num_blocks: int | None = None,
                    block_size: int = 16, policy: SchedulingPolicy | None = None, *,
                    vocab_size: int | None = None, eos_token_ids: tuple[int, ...] = (),
                    record_steps: bool = False, disk_kv_path: str | Path | None = None, **config) -> LLMEngine:
    """An LLMEngine with a SimulatedRunner on a fresh VirtualClock. `profile_or_model` is a step-time
    model or a profile file path. Without `num_blocks`, the KV capacity comes from the model: the
    roofline's GPU memory, or the `num_blocks`/`block_size` recorded in a linear profile. `config`
    goes to EngineConfig, over SIM_CONFIG_DEFAULTS. `disk_kv_path`: a folder where a disk tier
    (`num_disk_blocks`) keeps its index, so an engine made later on it starts from its blocks."""
    model = load_profile(profile_or_model) if isinstance(profile_or_model, str | Path) else profile_or_model
    if num_blocks is None:
        num_blocks = _default_num_blocks(model, block_size)
    clock = VirtualClock()
    engine_config = EngineConfig(block_size=block_size, num_blocks=num_blocks, **(SIM_CONFIG_DEFAULTS | config))
    runner = SimulatedRunner(model, clock, vocab_size or _vocab_size(model), eos_token_ids,
                             engine_config.num_host_blocks, num_disk_blocks=engine_config.num_disk_blocks,
                             disk_kv_path=disk_kv_path, block_size=block_size)
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
