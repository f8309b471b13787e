"""The scheduling benchmark at small scale on the real torch runner (a tiny random Llama on CPU).

Same workload shape as the simulated part (bench/scheduling_workload.py) with answers shortened
(real length / 4, at most 256 tokens) and prompts cut to 128 tokens, so a run takes a minute or
two. The engine runs on the CPU clock of its one torch thread (bench.common.CpuClock): on a shared
machine that is what a dedicated core would show. Arrivals are replayed on that clock. Near
saturation one replay still swings with small timing differences, so each is paired with a
noise-free twin: the simulated runner with this engine's config and step times fitted on its own
steps, on a virtual clock. Its requests' work scores come from a work table fitted on training requests
shrunk the same way (`shrunk_work_pools`), as a deployment's table describes its own traffic."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.common import CpuClock
from bench.scheduling_workload import WORKLOADS, LengthRequest, OracleRemainingPolicy
from engine.config import EngineConfig
from engine.hints import SchedulingHints
from engine.llm_engine import LLMEngine
from engine.policy import FCFSPolicy, SchedulingPolicy
from engine.rank_policy import RankPolicy
from engine.sampling_params import SamplingParams
from engine.simulate import Arrival, make_sim_engine, simulate
from engine.step_time import LinearStepTime
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner

BLOCK_SIZE = 16
MAX_PROMPT, MAX_OUTPUT, SHORTEN = 128, 256, 4
# A prompt token against an answer token in this engine's work scores: its prefill is cheap next to its
# decoding. Chosen with true lengths on its twin, training prompts, a later stretch of the trace
# (bench/scheduling_prefill_weight.py), as the simulated H100's 1.0 was.
TORCH_PREFILL_WEIGHT = 0.02


@dataclass(frozen=True)
class TorchRequest:
    arrival_s: float
    prompt: list[int]
    output_tokens: int
    rank_score: float


def torch_workload(times: np.ndarray, pools: list[list[LengthRequest]], requests: int, seed: int = 0
                   ) -> list[TorchRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(requests):
        pool = pools[int(rng.integers(0, len(pools)))]
        req = pool[int(rng.integers(0, len(pool)))]
        prompt = [1 + (i % 200), *[int(x) for x in rng.integers(1, 250, min(req.prompt_tokens, MAX_PROMPT) - 1)]]
        out.append(TorchRequest(float(times[i] - times[0]), prompt,
                                max(1, min(req.output_tokens // SHORTEN, MAX_OUTPUT)), req.rank_score))
    return out


def shrunk_work_pools(pools: list[list[LengthRequest]], workload: str = "mixed-mixtral",
                      prefill_weight: float = TORCH_PREFILL_WEIGHT) -> list[list[LengthRequest]]:
    """The pools' requests with work scores for the requests this replay serves (prompt cut to MAX_PROMPT,
    answer / SHORTEN): the work table is fitted on the ranker's training requests shrunk the same way.
    A table of full-size requests would weigh a few-shot prompt as 355 tokens where this engine
    prefills 128 of it."""
    from rankers.data import concat, load_lengths  # noqa: PLC0415
    from rankers.split import split_by_prompt  # noqa: PLC0415
    from rankers.work import CHARS_PER_TOKEN, WorkTable  # noqa: PLC0415

    sources, model = WORKLOADS[workload]
    train = concat([split_by_prompt(load_lengths(s))[0].with_models({model}) for s in sources])
    prompt_chars = int(MAX_PROMPT * CHARS_PER_TOKEN)
    shrunk = replace(train, prompts=[p[:prompt_chars] for p in train.prompts],
                     output_tokens=np.array([max(1, min(o // SHORTEN, MAX_OUTPUT)) for o in train.output_tokens]))
    table = WorkTable.fit(shrunk, prefill_weight)
    return [[replace(r, rank_score=table.score(r.answer_score, model, round(min(r.prompt_tokens, MAX_PROMPT) * CHARS_PER_TOKEN)))
             for r in pool] for pool in pools]


def tiny_engine_config(max_num_seqs: int = 8) -> EngineConfig:
    return EngineConfig(block_size=BLOCK_SIZE, num_blocks=max_num_seqs * 26 + 64,
                        max_model_len=MAX_PROMPT + MAX_OUTPUT + 1, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=512, long_prefill_token_threshold=MAX_PROMPT,
                        enable_prefix_caching=False)


def twin_replay(config: EngineConfig, model: LinearStepTime, policy: SchedulingPolicy,
                workload: list[TorchRequest], scale: float) -> dict[str, list[float]]:
    """The replay on the simulated runner with the tiny engine's config and fitted step times."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("block_size", "num_blocks")}
    engine = make_sim_engine(model, config.num_blocks, BLOCK_SIZE, policy, vocab_size=256, **settings)
    results = simulate(engine, (Arrival(r.arrival_s / scale, r.prompt, _params(r),
                                        hints=SchedulingHints(rank_score=r.rank_score)) for r in workload))
    return {"latency": [r.latency for r in results], "ttft": [r.ttft for r in results]}


class TinyEngineFactory:
    def __init__(self, max_num_seqs: int = 8) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.model_dir = make_tiny_model(Path(self._tmp.name) / "tiny", layers=2, hidden=64)
        self.config = tiny_engine_config(max_num_seqs)
        self.runner = TorchModelRunner(self.model_dir, self.config.num_blocks, BLOCK_SIZE, device="cpu",
                                       dtype=torch.float32)

    def engine(self, policy: SchedulingPolicy, record_steps: bool = False) -> tuple[LLMEngine, CpuClock]:
        clock = CpuClock()
        return LLMEngine(self.config, self.runner, clock, policy, record_steps=record_steps), clock

    def fit_step_time(self, workload: list[TorchRequest]) -> LinearStepTime:
        """This engine's step times, fitted on its own steps of one FCFS replay of `workload` as a
        burst (CPU clock, host overhead included): the profile of the noise-free twin below."""
        engine, _ = self.engine(FCFSPolicy(), record_steps=True)
        for i, req in enumerate(workload):
            engine.add_request(f"r{i}", req.prompt, _params(req), hints=SchedulingHints(rank_score=req.rank_score))
        while engine.has_unfinished():
            engine.step()
        return LinearStepTime.fit(engine.step_log or [])

    def simulated_replay(self, model: LinearStepTime, policy: SchedulingPolicy, workload: list[TorchRequest],
                         scale: float) -> dict[str, list[float]]:
        """The same replay on the simulated runner with this engine's config and fitted step times, on
        a virtual clock: what the torch replay measures, without the timing noise of a shared machine."""
        return twin_replay(self.config, model, policy, workload, scale)

    def close(self) -> None:
        self._tmp.cleanup()


def replay(factory: TinyEngineFactory, policy: SchedulingPolicy, workload: list[TorchRequest], scale: float
           ) -> dict[str, list[float]]:
    """Arrivals at `arrival_s / scale` on the engine's CPU clock; returns per-request latency and TTFT,
    and the longest single step (a stall there queues the arrivals behind it)."""
    engine, clock = factory.engine(policy)
    start = clock.now()
    seqs, i, longest = [], 0, 0.0
    while i < len(workload) or engine.has_unfinished():
        now = clock.now() - start
        while i < len(workload) and workload[i].arrival_s / scale <= now:
            req = workload[i]
            seqs.append(engine.add_request(f"r{i}", req.prompt, _params(req), arrival_time=start + req.arrival_s / scale,
                                           hints=SchedulingHints(rank_score=req.rank_score)))
            i += 1
        if engine.has_unfinished():
            before = clock.now()
            engine.step()
            longest = max(longest, clock.now() - before)
        elif i < len(workload):
            clock.advance_to(start + workload[i].arrival_s / scale)
    return {"latency": [s.finish_time - s.arrival_time for s in seqs],
            "ttft": [s.first_token_time - s.arrival_time for s in seqs], "longest_step_s": [longest]}


def _params(req: TorchRequest) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=req.output_tokens, ignore_eos=True)


def torch_policies(horizon_s: float) -> dict[str, SchedulingPolicy]:
    return {"fcfs": FCFSPolicy(), "rank": RankPolicy(horizon_s), "oracle": OracleRemainingPolicy()}
