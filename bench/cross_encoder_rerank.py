"""What a rerank of 1 query x 100 documents costs on the engine's cross-encoder (engine/cross_encoder.py), its
pairs in padded batches (the runner's way: sorted by length, at most 1,024 padded tokens a forward pass on a
CPU), against one pair a forward pass and all 100 in one, and against the bi-encoder cosine path the gateway has in its process (all-MiniLM-L6-v2, int8
ONNX, `pitstop-encoder/all-minilm-l6-v2`: gateway/backends/encoder.py, ranked by gateway/rerank.py's
cosine_scores) on the same texts, side by side in one process, on one thread each.

    .venv/bin/python -m bench.cross_encoder_rerank [--reps 3] [--documents 100] [--passage-chars 512]

The cross-encoder is random (no weights are fetched) but shaped as cross-encoder/ms-marco-MiniLM-L-6-v2: BERT,
6 layers, hidden 384, 12 heads, 512 positions (engine/tiny_cross_encoder.py; its WordPiece vocabulary is
smaller, which changes no compute but the embedding lookup): the same encoder shape as the bi-encoder, in
float32 torch where the bi-encoder runs int8 ONNX. Texts: docstrings of the standard library (the tiny
models' corpus), cut to `--passage-chars` at a word end (a retrieved chunk, ~100-130 tokens), the query a
question about them. The bi-encoder is timed cold (the query and every document embedded: nothing cached)
and warm (the query only: the gateway's response cache keeps each document's vector, gateway/rerank.py).
Wall milliseconds a rerank, median and max over `--reps` (interleaved, so drift falls on all alike).

Writes bench/results/cross_encoder_rerank.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, write_report  # noqa: E402
from engine.cross_encoder import BATCH_TOKENS, CrossEncoder  # noqa: E402
from engine.tiny_cross_encoder import make_tiny_cross_encoder  # noqa: E402
from engine.tiny_model import corpus_lines  # noqa: E402
from gateway.passages import PassageEncoder  # noqa: E402
from gateway.rerank import cosine_scores  # noqa: E402

OUT = RESULTS / "cross_encoder_rerank.json"
QUERY = "How do I read a file line by line and stop at the first blank line?"


def passages(count: int, chars: int) -> list[str]:
    """`count` docstrings of at least half `chars`, each cut to `chars` at a word end."""
    out = []
    for line in corpus_lines():
        text = " ".join(line.split())
        if len(text) < chars // 2:
            continue
        out.append(text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0])
        if len(out) == count:
            return out
    raise SystemExit(f"the corpus holds fewer than {count} passages of {chars // 2}+ characters")


def _timed(run) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--passage-chars", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the runner's worker thread uses 1 too; score_now runs on this one
    documents = passages(args.documents, args.passage_chars)
    pairs = [(QUERY, document) for document in documents]
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_cross_encoder(Path(tmp) / "ce", "bert", layers=6, hidden=384, heads=12,
                                         vocab_size=8000, max_positions=512)
        cross = CrossEncoder(folder, "cpu")
    bi = PassageEncoder()
    cached = bi.encode(documents)  # loads the encoder; the warm path's kept document vectors

    runs = {
        "cross_encoder_batched": lambda: cross.score_now(pairs),  # the runner's default budget
        "cross_encoder_one_pair_at_a_time": lambda: [cross.score_now([pair]) for pair in pairs],
        "cross_encoder_one_batch": lambda: cross.score_now(pairs, batch_tokens=10**9),
        "bi_encoder_cold": lambda: cosine_scores(*(lambda v: (v[0], v[1:]))(bi.encode([QUERY, *documents]))),
        "bi_encoder_warm": lambda: cosine_scores(bi.encode([QUERY])[0], cached),
    }
    for run in runs.values():  # warm-up: first-call allocations out of the timings
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            times[name].append(_timed(run))
    medians = {name: statistics.median(values) for name, values in times.items()}
    tokens = cross.score_now(pairs).tokens
    batched = medians["cross_encoder_batched"]
    report = {
        "command": command("bench.cross_encoder_rerank", argv), "machine": machine_info(),
        "settings": {"documents": len(documents), "passage_chars": args.passage_chars, "reps": args.reps,
                     "torch_threads": 1, "batch_tokens": BATCH_TOKENS["cpu"], "cross_encoder": "BERT L6 H384 A12, float32 torch (random)",
                     "bi_encoder": "all-MiniLM-L6-v2 int8 ONNX (gateway/passages.py)"},
        "pair_tokens": {"total": tokens, "mean": tokens / len(pairs)},
        "ms_median": medians,
        "ms_max": {name: max(values) for name, values in times.items()},
        "ratios": {"one_pair_at_a_time_vs_batched": medians["cross_encoder_one_pair_at_a_time"] / batched,
                   "one_batch_vs_batched": medians["cross_encoder_one_batch"] / batched,
                   "cross_encoder_batched_vs_bi_encoder_cold": batched / medians["bi_encoder_cold"],
                   "cross_encoder_batched_vs_bi_encoder_warm": batched / medians["bi_encoder_warm"]},
        "score_spread": float(np.ptp(cross.score_now(pairs).scores)),
    }
    write_report(OUT, report)
    print(json.dumps({k: report[k] for k in ("pair_tokens", "ms_median", "ratios")}, indent=2))
    return report


if __name__ == "__main__":
    main()
