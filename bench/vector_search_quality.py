"""bench/vector_search.py's quality half: where each ranking puts the file that answers a query (recall@1,
recall@5, MRR@10), checked against the gateway's own `top_hits`, each hybrid's paired difference to the
default, and how close the int8 encoder's embeddings are to the fp32 reference's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.common import pct
from gateway.passages import WINDOW_TOKENS
from gateway.vector_search import EMBEDDING_WEIGHT, MAX_RESULTS, TEXT_WEIGHT, Ranking, StoreIndex, top_hits

LIMIT = 10  # results a search returns (the API's default max_num_results)
HYBRID_WEIGHTS = ((0.5, 0.5), (0.6, 0.4), (0.7, 0.3), (0.8, 0.2), (0.9, 0.1))
DEFAULT = f"hybrid_{EMBEDDING_WEIGHT}_{TEXT_WEIGHT}"
RANKINGS: dict[str, Ranking] = {
    "embedding_only": Ranking(1.0, 0.0),
    "keyword_only": Ranking(0.0, 1.0),
    **{f"hybrid_{e}_{t}": Ranking(e, t) for e, t in HYBRID_WEIGHTS},
}


def file_starts(pieces: Sequence[Sequence[str]]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(parts) for parts in pieces])[:-1]]).astype(np.int64)


def file_order(scores: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Files by their best chunk's score, ties in chunk (= file) order; (file indexes best first, scores)."""
    best = np.maximum.reduceat(scores, starts)
    return np.lexsort((np.arange(len(best)), -best)), best


def rank_of(scores: np.ndarray, starts: np.ndarray, relevant: int) -> int | None:
    """1-based rank of file `relevant`; None where it scores 0 (never a hit)."""
    best = np.maximum.reduceat(scores, starts)
    mine = best[relevant]
    if mine <= 0.0:
        return None
    return 1 + int((best > mine).sum()) + int((best[:relevant] == mine).sum())


def check_against_top_hits(index: StoreIndex, scores: np.ndarray, starts: np.ndarray, ranking: Ranking) -> bool:
    """The files `top_hits` returns (first appearances among its chunks) lead this benchmark's file order."""
    hits = top_hits([("vs", index, scores)], lambda _s, _f: True, MAX_RESULTS, ranking.score_threshold)
    seen = list(dict.fromkeys(hit.file_id for hit in hits))
    order, best = file_order(scores, starts)
    ids = [index.chunks.file_ids[starts[f]] for f in order[:len(seen)] if best[f] > 0]
    return ids == seen[:len(ids)] and len(ids) == len(seen)


def evaluate(index: StoreIndex, starts: np.ndarray, vectors: np.ndarray, queries: Sequence[str],
             ranking: Ranking) -> dict:
    ranks: list[int | None] = []
    mismatches = 0
    for i, (vector, query) in enumerate(zip(vectors, queries, strict=True)):
        scores = index.scores(vector, query, ranking)
        ranks.append(rank_of(scores, starts, i))
        mismatches += not check_against_top_hits(index, scores, starts, ranking)
    reciprocal = np.array([1.0 / r if r is not None and r <= LIMIT else 0.0 for r in ranks])
    at1 = np.array([r == 1 for r in ranks], dtype=np.float64)
    at5 = np.array([r is not None and r <= 5 for r in ranks], dtype=np.float64)
    return {"recall@1": round(float(at1.mean()), 4), "recall@5": round(float(at5.mean()), 4),
            "mrr@10": round(float(reciprocal.mean()), 4),
            "not_in_top_10": int(sum(r is None or r > LIMIT for r in ranks)),
            "never_hit": int(sum(r is None for r in ranks)),
            "top_hits_order_mismatches": mismatches,
            "_per_query": {"rr": reciprocal, "at1": at1}}


def paired(per_query: dict[str, dict], base: str, resamples: int, seed: int = 0) -> dict:
    """Each ranking's mean per-query difference to `base` in MRR@10 and recall@1, with a 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    n = len(per_query[base]["rr"])
    draws = rng.integers(0, n, size=(resamples, n))
    out = {}
    for name, values in per_query.items():
        if name == base:
            continue
        row = {}
        for metric in ("rr", "at1"):
            diff = values[metric] - per_query[base][metric]
            means = diff[draws].mean(axis=1)
            label = "mrr@10" if metric == "rr" else "recall@1"
            row[label] = {"diff": round(float(diff.mean()), 4),
                          "ci95": [round(float(np.percentile(means, 2.5)), 4),
                                   round(float(np.percentile(means, 97.5)), 4)]}
        out[name] = row
    return out


def quality(index: StoreIndex, starts: np.ndarray, vectors: np.ndarray, queries: Sequence[str],
            names: Sequence[str]) -> tuple[dict, dict]:
    table, per_query = {}, {}
    for name in names:
        row = evaluate(index, starts, vectors, queries, RANKINGS[name])
        per_query[name] = row.pop("_per_query")
        table[name] = {"embedding_weight": RANKINGS[name].embedding_weight,
                       "text_weight": RANKINGS[name].text_weight, **row}
    return table, per_query


def cosines(cos: np.ndarray, tokens: np.ndarray) -> dict:
    """int8-to-fp32 cosines; apart, those of texts within one window (past it the two encoders differ by
    design: the int8 one averages windows, the fp32 one reads the first 256 tokens)."""
    one = cos[tokens <= WINDOW_TOKENS]
    return {"mean": round(float(cos.mean()), 4), "p1": round(pct(list(cos), 1), 4),
            "min": round(float(cos.min()), 4),
            "min_within_one_window": round(float(one.min()), 4) if len(one) else None}
