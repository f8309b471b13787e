"""How well and how fast the gateway's POST /v1/rerank reorders retrieved documents with a local embedding
model: all-MiniLM-L6-v2 (int8, as the gateway's vector stores run it) in the gateway's process, its model
`minilm` (`pitstop-encoder/all-minilm-l6-v2`, gateway/backends/encoder.py) marked `mode: embedding`, so the
rerank is a bi-encoder's cosine (gateway/rerank.py).

    .venv/bin/python -m bench.gateway_rerank [--queries N] [--latency-requests 30]

Data: ../shared/data/alpaca_eval_outputs/outputs.jsonl from the repo root (skipped with a message, exit 0,
where it is absent): the set bench/vector_search.py searches, the alpaca_eval instructions as queries over
one model's answers to them (gpt4_1106_preview: 617), each query's own answer the one relevant document.

Quality: BM25 (k1 1.2, b 0.75, lower-cased \\w+ words, as gateway/vector_search.py weighs them) ranks the
answers for each instruction; its top 20 and top 100 are the candidates, sent in that order to the
gateway's /v1/rerank with `top_n` 10. nDCG@10 and MRR@10 of the relevant answer (one relevant: nDCG is
1/log2(1 + rank)) in BM25's order and in the reranked order; recall@k, the ceiling a reranker of k
candidates cannot pass; the reranked minus BM25 difference, with a 95% bootstrap interval (queries
resampled). The requests opt into the response cache, so an answer seen by many queries is embedded once
(its vector is the same either way).

Speed: for `--latency-requests` instructions (seeded draw), their top 20 and top 100 BM25 candidates cut
to `--passage-chars` (512, at a word end: a retrieved chunk's size, ~110 tokens), one request at a time: the
encoder run directly in this process on the same texts (the query and the documents, one call), the gateway's
rerank cold (`x-pitstop-cache: use-cache, no-cache`: nothing read from the cache, every text embedded) and
warm (every text's vector kept by the cold request: no upstream call). Wall p50/p99 in ms (p99 of 30 is
about the slowest), the median of each request's cold minus direct time, and the gateway's mean CPU a
request (its process, /proc; the encoding included, since it runs there). This client and the gateway
share the machine; the load average is recorded.

Writes bench/results/gateway_rerank.json."""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import yaml

if __package__ in (None, ""):  # run as a script: make `bench` and `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, RESULTS, command, machine_info, pct, write_report  # noqa: E402
from bench.procs import Service, pitstop_serve  # noqa: E402
from bench.vector_search import CORPUS_MODEL, OUTPUTS, load_pairs  # noqa: E402

OUT = RESULTS / "gateway_rerank.json"
K1, B = 1.2, 0.75
CUTOFF = 10  # nDCG@10, MRR@10, top_n
PRICE = 2e-8  # $ an input token: text-embedding-3-small's
_WORD = re.compile(r"\w+")


class BM25:
    def __init__(self, documents: Sequence[str]) -> None:
        counts = [Counter(_WORD.findall(d.lower())) for d in documents]
        self.lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        frequency = Counter(word for c in counts for word in c)
        n = len(documents)
        self.idf = {word: math.log(1 + (n - f + 0.5) / (f + 0.5)) for word, f in frequency.items()}
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for doc, c in enumerate(counts):
            for word, tf in c.items():
                self.postings[word].append((doc, tf))

    def top(self, query: str, k: int) -> list[int]:
        scores = np.zeros(len(self.lengths))
        norm = K1 * (1 - B + B * self.lengths / self.lengths.mean())
        for word in set(_WORD.findall(query.lower())):
            for doc, tf in self.postings.get(word, ()):
                scores[doc] += self.idf[word] * tf * (K1 + 1) / (tf + norm[doc])
        return np.lexsort((np.arange(len(scores)), -scores))[:k].tolist()


def gains(order: Sequence[int], relevant: int) -> tuple[float, float]:
    """(nDCG@10, reciprocal rank @10) of the one relevant document in `order`."""
    rank = order.index(relevant) + 1 if relevant in order[:CUTOFF] else None
    return (1 / math.log2(rank + 1), 1 / rank) if rank else (0.0, 0.0)


def interval(diff: np.ndarray, resamples: int, seed: int = 0) -> list[float]:
    means = diff[np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def rerank(http: httpx.Client, query: str, documents: list[str], cache: str) -> httpx.Response:
    answer = http.post("/v1/rerank", headers={"x-pitstop-cache": cache},
                       json={"model": "minilm", "query": query, "documents": documents, "top_n": CUTOFF,
                             "return_documents": False})
    if answer.status_code != 200:
        raise RuntimeError(f"rerank answered {answer.status_code}: {answer.text[:500]}")
    return answer


def quality(http: httpx.Client, bm25: BM25, pairs: list[tuple[str, str]], ks: Sequence[int],
            resamples: int) -> dict:
    answers = [answer for _, answer in pairs]
    per_k: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in ks}
    started = time.perf_counter()
    for relevant, (query, _) in enumerate(pairs):
        candidates = bm25.top(query, max(ks))
        for k in sorted(ks, reverse=True):  # the largest first: the others' documents are then all kept
            shortlist = candidates[:k]
            body = rerank(http, query, [answers[d] for d in shortlist], "use-cache").json()
            reranked = [shortlist[r["index"]] for r in body["results"]]
            row = per_k[k]
            for name, value in zip(("bm25_ndcg", "bm25_rr"), gains(shortlist, relevant), strict=True):
                row[name].append(value)
            for name, value in zip(("rerank_ndcg", "rerank_rr"), gains(reranked, relevant), strict=True):
                row[name].append(value)
            row["recall"].append(float(relevant in shortlist))
    out: dict = {"seconds": round(time.perf_counter() - started, 1)}
    for k, row in per_k.items():
        values = {name: np.array(v) for name, v in row.items()}
        out[f"top_{k}"] = {
            f"recall@{k}": round(float(values["recall"].mean()), 4),
            "bm25": {"ndcg@10": round(float(values["bm25_ndcg"].mean()), 4),
                     "mrr@10": round(float(values["bm25_rr"].mean()), 4)},
            "reranked": {"ndcg@10": round(float(values["rerank_ndcg"].mean()), 4),
                         "mrr@10": round(float(values["rerank_rr"].mean()), 4)},
            "reranked_minus_bm25": {
                metric: {"diff": round(float((values[f"rerank_{m}"] - values[f"bm25_{m}"]).mean()), 4),
                         "ci95": interval(values[f"rerank_{m}"] - values[f"bm25_{m}"], resamples)}
                for metric, m in (("ndcg@10", "ndcg"), ("mrr@10", "rr"))}}
    return out


def passage(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0]


def latency(http: httpx.Client, gateway: Service, bm25: BM25, pairs: list[tuple[str, str]],
            sizes: Sequence[int], requests: int, chars: int) -> dict:
    from gateway.passages import PassageEncoder

    chosen = random.Random(0).sample(range(len(pairs)), requests)
    out = {}
    encoder = PassageEncoder()
    encoder.encode(["warm up"])
    for size in sizes:
        timings: dict[str, list[float]] = defaultdict(list)
        for i in chosen:
            query = pairs[i][0]
            documents = [passage(pairs[d][1], chars) for d in bm25.top(query, size)]
            started = time.perf_counter()
            encoder.encode([query, *documents])
            timings["embedder_direct"].append(time.perf_counter() - started)
            for name, cache in (("gateway_cold", "use-cache, no-cache"), ("gateway_warm", "use-cache")):
                cpu, started = gateway.cpu_seconds(), time.perf_counter()
                answer = rerank(http, query, documents, cache)
                timings[name].append(time.perf_counter() - started)
                timings[f"{name}_cpu"].append(gateway.cpu_seconds() - cpu)
                expected = "miss" if name == "gateway_cold" else "hit"
                assert answer.headers["x-pitstop-cache"] == expected, (name, answer.headers["x-pitstop-cache"])
        row = out[f"{size}_documents"] = {
            name: {"p50_ms": round(pct(values, 50) * 1e3, 2), "p99_ms": round(pct(values, 99) * 1e3, 2),
                   "mean_ms": round(statistics.fmean(values) * 1e3, 2)}
            for name, values in timings.items() if not name.endswith("_cpu")}
        for name in ("gateway_cold", "gateway_warm"):  # /proc counts 10 ms ticks: only a mean means anything
            row[f"{name}_cpu_mean_ms"] = round(statistics.fmean(timings[f"{name}_cpu"]) * 1e3, 2)
        # The embedder's own time varies by tens of ms: the gateway's share, request by request.
        row["gateway_cold_minus_direct_median_ms"] = round(statistics.median(
            cold - direct for cold, direct in zip(timings["gateway_cold"], timings["embedder_direct"],
                                                  strict=True)) * 1e3, 2)
    return out


def _config(work: Path) -> Path:
    config = {"model_list": [{"model_name": "minilm",
                              "litellm_params": {"model": "pitstop-encoder/all-minilm-l6-v2"},
                              "model_info": {"mode": "embedding", "input_cost_per_token": PRICE}}],
              "cache": {"requests": "opt_in", "max_bytes": 512 * 1024 * 1024},
              "storage": {"url": f"sqlite:///{work / 'outcomes.db'}", "spool_path": str(work / 'spool.jsonl')},
              "ranking": {"enabled": False}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=None, help="the first N instructions (default: all)")
    parser.add_argument("--candidates", default="20,100", help="BM25 candidates reranked, comma-separated")
    parser.add_argument("--latency-requests", type=int, default=30)
    parser.add_argument("--latency-sizes", default="20,100", help="documents a request, comma-separated")
    parser.add_argument("--passage-chars", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not OUTPUTS.exists():
        print(f"skipped: {OUTPUTS} is absent (the shared data folder is expected at {DATA})")
        return 0
    pairs, counts = load_pairs(OUTPUTS, CORPUS_MODEL, args.queries)
    bm25 = BM25([answer for _, answer in pairs])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gateway, gateway_url = pitstop_serve(_config(work), work / "pitstop.log")
        try:
            gateway.start()
            with httpx.Client(base_url=gateway_url, timeout=600) as http:
                rerank(http, "warm", ["the gateway and the encoder warmed up"], "no-store")
                ranked = quality(http, bm25, pairs, [int(k) for k in args.candidates.split(",")], args.bootstrap)
                timed = latency(http, gateway, bm25, pairs,
                                [int(s) for s in args.latency_sizes.split(",")], args.latency_requests,
                                args.passage_chars)
        finally:
            gateway.stop()
    report = {
        "command": command("bench.gateway_rerank", argv), "machine": machine_info(),
        "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "data": {"file": str(OUTPUTS.relative_to(DATA.parent.parent)), "corpus_model": CORPUS_MODEL,
                 "queries": len(pairs), "documents": len(pairs), **counts},
        "reranker": "all-MiniLM-L6-v2 int8 (gateway/passages.py) in the gateway's process "
                    "(pitstop-encoder/all-minilm-l6-v2), model_info.mode: embedding: cosine of query and document "
                    "embeddings",
        "quality": ranked, "latency": {"requests": args.latency_requests, "passage_chars": args.passage_chars,
                                       **timed}}
    print(write_report(args.out, report))
    for k in args.candidates.split(","):
        row = ranked[f"top_{k}"]
        print(f"top {k}: recall {row[f'recall@{k}']}, nDCG@10 {row['bm25']['ndcg@10']} -> {row['reranked']['ndcg@10']}, "
              f"MRR@10 {row['bm25']['mrr@10']} -> {row['reranked']['mrr@10']}")
    for size in args.latency_sizes.split(","):
        row = timed[f"{size}_documents"]
        print(f"{size} documents: direct p50 {row['embedder_direct']['p50_ms']} ms, gateway cold p50 "
              f"{row['gateway_cold']['p50_ms']} / p99 {row['gateway_cold']['p99_ms']} ms, warm p50 "
              f"{row['gateway_warm']['p50_ms']} / p99 {row['gateway_warm']['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
