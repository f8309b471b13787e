"""Expected work: a rank score and the prompt's size turned into one score for the scheduler.

A ranker's score places a request among its model's training answers by length. But an engine spends
a request's time on its prompt too: with chunked prefill, a prompt token costs a step about what an
answer token does. Where prompts differ in length (a deployment serving chat, maths and few-shot
multiple choice), ordering by answer length alone puts a short answer to a long prompt first and gains
little; ordering by prompt plus answer gains more (bench/scheduling.py, `rank-answer-only` against
`rank`; an oracle that knows both true lengths gains 1.55x over FCFS where the answer-only oracle gains
1.24x, mixed workload at 240 req/s).

`WorkTable.score` keeps the rank score's contract (engine/rank_policy.py): a number in [0, 1], the share
of the model's training requests expected to take less work, so the aging rule and its starvation
bound are unchanged. Work = PREFILL_WEIGHT x prompt tokens + answer tokens, the prompt's tokens
estimated from its characters (the gateway does not tokenize whole conversations) and the answer's read
off the model's training lengths at the rank score's quantile. A model without enough training answers
uses the pooled tables, as calibration does (rankers/base.py). The weight depends on the engine: 1.0
for LLM serving on a GPU (bench/scheduling_prefill_weight.py, on the simulated H100), far less on the
CPU torch runner, whose prefill is cheap next to its decoding (the same benchmark, on its twin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the gateway imports this module; the data loaders stay out of its import
    from rankers.data import LengthData

LEVELS = np.linspace(0.0, 1.0, 101)
_NUDGE = np.arange(len(LEVELS)) * 1e-9  # strictly increasing x for np.interp over tied quantiles
CHARS_PER_TOKEN = 4.0  # English text in BPE vocabularies; only the order of works matters
PREFILL_WEIGHT = 1.0
MIN_ROWS = 50  # as rankers/base.py's calibration
POOLED = ""


def estimated_tokens(chars: int | float) -> float:
    return float(chars) / CHARS_PER_TOKEN


class WorkTable:
    """Per training model, every training request's (estimated prompt tokens, answer tokens); the
    quantile tables for one prefill weight are built from them, so a deployment can weigh prompts as
    its engine does (`with_weight`, `ranking.prefill_weight`)."""

    def __init__(self, rows: dict[str, np.ndarray], prefill_weight: float = PREFILL_WEIGHT) -> None:
        self.rows = rows  # model -> (n, 2) float64: prompt tokens (estimated), answer tokens
        self.prefill_weight = prefill_weight
        self.answer_tokens: dict[str, np.ndarray] = {}  # model -> answer-token quantiles at LEVELS
        self.work_tokens: dict[str, np.ndarray] = {}  # model -> quantiles of weight x prompt + answer
        groups = {POOLED: np.concatenate([rows[m] for m in sorted(rows)])}
        groups |= {m: r for m, r in rows.items() if len(r) >= MIN_ROWS}
        for model, pairs in groups.items():
            self.answer_tokens[model] = np.quantile(pairs[:, 1], LEVELS)
            self.work_tokens[model] = np.quantile(prefill_weight * pairs[:, 0] + pairs[:, 1], LEVELS)

    @classmethod
    def fit(cls, data: LengthData, prefill_weight: float = PREFILL_WEIGHT) -> WorkTable:
        """From training rows: each answer's real length and its prompt's estimated tokens."""
        pairs = np.column_stack([[estimated_tokens(len(p)) for p in data.prompts],
                                 data.output_tokens.astype(np.float64)])
        return cls({m: pairs[data.models == m] for m in data.model_names}, prefill_weight)

    def with_weight(self, prefill_weight: float) -> WorkTable:
        return self if prefill_weight == self.prefill_weight else WorkTable(self.rows, prefill_weight)

    def __getstate__(self) -> dict:
        return {"rows": self.rows, "prefill_weight": self.prefill_weight}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rows"], state["prefill_weight"])  # type: ignore[misc]

    def expected_work(self, rank_score: float, model: str, prompt_chars: int, cached_tokens: float = 0.0) -> float:
        """Prompt plus expected answer, in tokens. `cached_tokens` of the prompt are already in the
        engine's KV cache (an agent's returning turn on the instance that pinned its context) and
        cost no prefill."""
        key = model if model in self.answer_tokens else POOLED
        answer = float(np.interp(min(max(rank_score, 0.0), 1.0), LEVELS, self.answer_tokens[key]))
        prefill = max(0.0, estimated_tokens(prompt_chars) - max(0.0, cached_tokens))
        return self.prefill_weight * prefill + answer

    def answer_rank(self, answer_tokens: float, model: str) -> float:
        """The share of the model's training answers shorter than `answer_tokens`: the inverse of the
        rank score's answer lookup, so an oracle that knows the true length can score like a ranker."""
        quantiles = self.answer_tokens[model if model in self.answer_tokens else POOLED]
        return float(np.interp(answer_tokens, quantiles + _NUDGE, LEVELS))

    def score(self, rank_score: float, model: str, prompt_chars: int, cached_tokens: float = 0.0) -> float:
        """The share of the model's training requests with less work than this one's expected work."""
        key = model if model in self.work_tokens else POOLED
        work = self.expected_work(rank_score, model, prompt_chars, cached_tokens)
        quantiles = self.work_tokens[key]
        bottom = np.interp(work, quantiles + _NUDGE, LEVELS)
        top = np.interp(work, quantiles - _NUDGE[::-1], LEVELS)
        return float((bottom + top) / 2)
