"""Least expected work first, with linear aging (the ranker's order, rankers/).

Key: (priority, arrival_time + horizon_s x rank_score). The rank score is in [0, 1]: from the gateway,
the share of the model's training requests with less work than this one's prompt plus predicted
answer (rankers/work.py), or, without a work table, the share of its training answers predicted
shorter. Either way a request's key is its arrival time pushed back by at most `horizon_s`. Why this rule, not vllm-ltr's skip-count promotion: it is a plain,
static sort key (the waiting queue is a heap keyed once at entry, the gateway's admission queue uses
the same key, the agent-session wrapper composes with it), and it gives a bound in seconds that
holds whatever the step rate:

  Starvation bound. A request that arrived at t has key <= t + horizon_s; every request arriving
  after t + horizon_s has a larger key. So it is overtaken only by requests that arrived at most
  horizon_s after it: once those (finitely many) are served, it is next. With horizon_s = 0 the
  policy is FCFS; as horizon_s grows it approaches pure shortest-predicted-first.

A request without a score (not ranked) counts as the median, 0.5. Explicit `priority` (vLLM
semantics, lower first) stays the leading term, so it composes with client and program priorities."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.sequence import Sequence

# Chosen on the scheduling benchmark (bench/scheduling.py): long enough for short answers to pass
# a long one under load, short against the e2e latency of a long answer at saturation, so p99 holds.
DEFAULT_HORIZON_S = 30.0
UNRANKED_SCORE = 0.5


class RankPolicy:
    name = "rank"

    def __init__(self, horizon_s: float = DEFAULT_HORIZON_S) -> None:
        assert horizon_s >= 0.0
        self.horizon_s = horizon_s

    def effective_score(self, seq: Sequence) -> float:
        score = seq.hints.rank_score
        return UNRANKED_SCORE if score is None else min(max(float(score), 0.0), 1.0)

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        return (seq.priority, seq.arrival_time + self.horizon_s * self.effective_score(seq))
