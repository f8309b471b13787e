"""The scheduling benchmark's workload: real arrivals, real prompts, real answer lengths, real ranks.

Arrival times are the Azure 2023 conversation trace's, rescaled to a target mean rate. Each arrival
draws (seed-fixed, the same draw for every policy) one AlpacaEval prompt held out from the ranker's
training (rankers/split.py) with the real length of one model's answer to it; its rank score is the
trained ranker's for that prompt and model. Prompt token ids are distinct per arrival (no false
prefix-cache hits)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import DATA, ROOT
from engine.hints import SchedulingHints
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import Arrival
from rankers.work import PREFILL_WEIGHT

TRACE = DATA / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


@dataclass(frozen=True)
class LengthRequest:
    prompt_tokens: int
    output_tokens: int
    rank_score: float  # what the gateway sends by default: expected work, prompt plus answer (rankers/work.py)
    answer_score: float = 0.5  # the ranker's own score: answer length alone


WORKLOADS = {
    # One 8B chat model's answers to open-ended instructions (narrow length spread: CV 0.55).
    "alpaca-llama3-8b": (("alpaca_eval",), "meta-llama-3-8b-instruct"),
    # One model (Mixtral-8x7B) serving chat, grade-school maths and multiple-choice/code tasks, a
    # third of the traffic each: the spread of lengths a shared deployment sees.
    "mixed-mixtral": (("alpaca_eval", "gsm8k", "routerbench"), "mixtral-8x7b-instruct"),
}


def ranker_facts(ranker_path: Path | None = None) -> dict[str, str]:
    """Which artifact ranked the requests: its path, family and version (from its manifest)."""
    from rankers.artifact import DEFAULT_ARTIFACT, read_manifest  # noqa: PLC0415

    path = Path(ranker_path or DEFAULT_ARTIFACT).resolve()
    manifest = read_manifest(path)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return {"path": str(shown), "family": manifest["family"], "version": manifest["version"]}


def held_out_requests(workload: str, ranker_path: Path | None = None) -> list[list[LengthRequest]]:
    """Per source, the held-out prompts with the workload model's real answer lengths and ranks: the
    work score the gateway computes (gateway/ranking.py; the answer score where the artifact has no
    work table) and the answer score alone."""
    from rankers.artifact import DEFAULT_ARTIFACT, load_ranker  # noqa: PLC0415
    from rankers.data import load_lengths  # noqa: PLC0415
    from rankers.split import split_by_prompt  # noqa: PLC0415
    from routers.tokens import count_tokens  # noqa: PLC0415

    sources, model = WORKLOADS[workload]
    ranker = load_ranker(ranker_path or DEFAULT_ARTIFACT)
    pools = []
    for source in sources:
        _, test = split_by_prompt(load_lengths(source))
        test = test.with_models({model})
        scores = ranker.score_batch(list(test.prompts), list(test.models))
        table = getattr(ranker, "work_table", None)
        work = scores if table is None else [table.score(float(s), model, len(p)) for s, p in zip(scores, test.prompts, strict=True)]
        prompt_tokens = count_tokens(list(test.prompts))
        pools.append([LengthRequest(max(p, 2), max(int(o), 1), float(w), float(s))
                      for p, o, w, s in zip(prompt_tokens, test.output_tokens, work, scores, strict=True)])
    return pools


def answer_only(pools: list[list[LengthRequest]]) -> list[list[LengthRequest]]:
    """The same requests ranked by answer length alone (`ranking.by_work: false`)."""
    return [[replace(r, rank_score=r.answer_score) for r in pool] for pool in pools]


def trace_times(limit: int) -> np.ndarray:
    from bench.sim_speed import read_trace  # noqa: PLC0415

    return np.array([t for t, _, _ in read_trace(TRACE, limit)])


def arrivals(times: np.ndarray, pools: list[list[LengthRequest]], rate: float, seed: int = 0,
             max_output: int | None = None) -> Iterator[Arrival]:
    """`times` rescaled to `rate` requests per second on average; each arrival picks a source
    uniformly, then a prompt of it."""
    scale = (len(times) - 1) / (times[-1] - times[0]) / rate
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, len(pools), len(times))
    picks = rng.random(len(times))
    for i, (t, source, pick) in enumerate(zip(times, sources, picks, strict=True)):
        pool = pools[source]
        req = pool[int(pick * len(pool))]
        out = req.output_tokens if max_output is None else min(req.output_tokens, max_output)
        prompt = [1 + i // 30_000, 1 + i % 30_000, *range(40_000, 40_000 + req.prompt_tokens - 2)]
        yield Arrival(float((t - times[0]) * scale), prompt, SamplingParams(max_tokens=out, ignore_eos=True),
                      hints=SchedulingHints(rank_score=req.rank_score))


class OracleRemainingPolicy:
    """The bound: true lengths known, shortest remaining answer first (re-keyed when a preempted
    request waits again). Benchmark only: no real request knows its length."""

    name = "oracle"

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        return (seq.priority, float(seq.params.max_tokens - seq.num_output_tokens), seq.arrival_time)


class OracleWorkPolicy:
    """The tighter bound where prompts differ: true lengths known, least remaining work first, work
    being `prefill_weight` x the prompt tokens still to compute plus the answer tokens still to come
    (rankers/work.py's measure, on true numbers). Benchmark only."""

    name = "oracle-work"

    def __init__(self, prefill_weight: float = PREFILL_WEIGHT) -> None:
        self.prefill_weight = prefill_weight

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        prompt_left = max(seq.num_prompt_tokens - seq.num_computed_tokens, 0)
        answer_left = seq.params.max_tokens - seq.num_output_tokens
        return (seq.priority, self.prefill_weight * prompt_left + float(answer_left), seq.arrival_time)
