"""What a rerank of 1 query x N documents costs on a decoder scorer (a Qwen3ForSequenceClassification, one
label) two ways, side by side in one process on one torch thread: the engine's path (engine/decoder_scorer.py:
each pair one engine request, batched by the scheduler without padding, the query's tokens a prefix the pairs
share from the paged cache) against transformers' AutoModelForSequenceClassification on padded batches (the pairs
sorted by length, `--batch` a forward pass, as engine/cross_encoder.py batches an encoder).

    .venv/bin/python -m bench.decoder_rerank [--reps 3] [--documents 32] [--passage-chars 512]

The model is random (no weights are fetched; engine/tiny_classifier.py): Qwen3, `--layers` layers of hidden
`--hidden`, 4 heads (2 KV), a 1,024-token byte-level BPE vocabulary, float32. Prompts are Qwen3-Reranker's template
(engine/decoder_scorer.py qwen3_reranker_parts: the instruction and query first, ~170 tokens here, then the
document), tokenized once and given to both paths as the same ids. Documents: docstrings of the standard library
cut to `--passage-chars` at a word end, different ones each rerank (a rerank's documents are new; its query is
shared). Each rerank is timed on the engine with the query cached (`engine_query_cached`: the usual case past a
rerank's first step) and with a new query each time (`engine_cold`: the query per pair unless a step shares
it), and on transformers; pairs scored a second, median over `--reps` (interleaved). The two paths' scores are
compared (max absolute difference of sigmoid scores).

Writes bench/results/decoder_rerank.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, write_report  # noqa: E402
from bench.cross_encoder_rerank import passages  # noqa: E402
from engine.build import build_engine  # noqa: E402
from engine.classifier_config import classifier_head  # noqa: E402
from engine.decoder_scorer import DecoderScorer, qwen3_reranker_parts, sigmoid  # noqa: E402
from engine.tiny_classifier import make_tiny_classifier  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

OUT = RESULTS / "decoder_rerank.json"
QUERY = "How do I read a file line by line and stop at the first blank line?"


def transformers_scores(model: torch.nn.Module, prompts: list[list[int]], batch: int, pad: int) -> list[float]:
    """sigmoid(logit) of each prompt, `batch` prompts of similar length a padded forward pass."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = [0.0] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :len(prompts[i])] = torch.tensor(prompts[i])
                mask[row, :len(prompts[i])] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, 0]
            for i, score in zip(chunk, torch.sigmoid(logits).tolist(), strict=True):
                scores[i] = score
    return scores


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForSequenceClassification

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--documents", type=int, default=32)
    parser.add_argument("--passage-chars", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="transformers' pairs a padded forward pass")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    texts = passages(args.documents * (2 * args.reps + 2), args.passage_chars)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_classifier(Path(tmp) / "qwen3", "qwen3", 1, layers=args.layers, hidden=args.hidden)
        tokenizer = Tokenizer(folder)
        reference = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
        engine = build_engine(folder, num_blocks=4096, max_model_len=1024, max_num_seqs=64, device="cpu")
        scorer = DecoderScorer(engine, folder, classifier_head(folder))  # type: ignore[arg-type]

        def prompts(query: str, documents: list[str]) -> list[list[int]]:
            return [tokenizer.encode(first) + tokenizer.encode(second)
                    for first, second in (qwen3_reranker_parts(query, d) for d in documents)]

        async def run() -> dict:
            await scorer.start()
            try:
                batches = iter(range(0, len(texts), args.documents))
                def documents() -> list[str]:
                    start = next(batches)
                    return texts[start:start + args.documents]
                times: dict[str, list[float]] = {"engine_query_cached": [], "engine_cold": [], "transformers": []}
                diffs, tokens = [], []
                await scorer.logits(prompts(QUERY, documents()))  # warm-up; caches the query
                for rep in range(args.reps):
                    cached = prompts(QUERY, documents())
                    cold = prompts(f"{QUERY} (rep {rep})", documents())
                    start = time.perf_counter()
                    engine_scores = [sigmoid(row[0]) for row in await scorer.logits(cached)]
                    times["engine_query_cached"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await scorer.logits(cold)
                    times["engine_cold"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    hf_scores = transformers_scores(reference, cached, args.batch, tokenizer.token_to_id("<|pad|>") or 0)
                    times["transformers"].append(time.perf_counter() - start)
                    diffs.append(max(abs(a - b) for a, b in zip(engine_scores, hf_scores, strict=True)))
                    tokens.append(sum(map(len, cached)))
                return {"times": times, "diffs": diffs, "tokens": tokens,
                        "query_tokens": len(tokenizer.encode(qwen3_reranker_parts(QUERY, "")[0]))}
            finally:
                await scorer.shutdown()

        measured = asyncio.run(run())
    pairs_per_s = {name: args.documents / statistics.median(values) for name, values in measured["times"].items()}
    report = {
        "command": command("bench.decoder_rerank", argv), "machine": machine_info(),
        "settings": {"documents": args.documents, "passage_chars": args.passage_chars, "reps": args.reps,
                     "torch_threads": 1, "model": f"Qwen3ForSequenceClassification L{args.layers} H{args.hidden} "
                     "4 heads (2 KV), float32 (random)", "transformers_batch": args.batch, "block_size": 16},
        "pair_tokens": {"mean": statistics.mean(measured["tokens"]) / args.documents,
                        "query_part": measured["query_tokens"]},
        "pairs_per_s_median": pairs_per_s,
        "ms_median_a_rerank": {name: 1000 * statistics.median(v) for name, v in measured["times"].items()},
        "ratios": {"engine_query_cached_vs_transformers": pairs_per_s["engine_query_cached"]
                   / pairs_per_s["transformers"],
                   "engine_cold_vs_transformers": pairs_per_s["engine_cold"] / pairs_per_s["transformers"]},
        "max_abs_score_difference": max(measured["diffs"]),
    }
    write_report(OUT, report)
    print(json.dumps({k: report[k] for k in ("pair_tokens", "pairs_per_s_median", "ratios",
                                            "max_abs_score_difference")}, indent=2))
    return report


if __name__ == "__main__":
    main()
