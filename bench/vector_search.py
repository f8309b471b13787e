"""How well and how fast the gateway's vector-store search finds the answer to a question: hybrid ranking
(gateway/vector_search.py) over chunks embedded by the int8 ONNX all-MiniLM-L6-v2 (gateway/passages.py).

    .venv/bin/python -m bench.vector_search [--docs N] [--threads 1]

Data: ../shared/data/alpaca_eval_outputs/outputs.jsonl from the repo root (skipped with a message, exit 0,
where it is absent). The corpus is the outputs of ONE model (`--model`, default
gpt4_1106_preview: it answered all 617 instructions, at the greatest length, so the most chunks), each output
one file, cut by `PassageEncoder.chunks(text, Chunking())` (auto: 254-token chunks overlapping by 127) and
embedded by `PassageEncoder.encode` in batches of 16 (gateway/vector_ingest.py's ENCODE_BATCH), exactly as
ingestion does; the chunks make one `StoredChunks` (files in order, positions within) and one
`StoreIndex.build`. The queries are the instructions (the first `--docs` of them in the file; default all),
each embedded alone as a search embeds it; the relevant file of a query is that instruction's output.

Quality: per ranking, `StoreIndex.scores(query_vector, query, Ranking(e, t))` scores every chunk; a file's
score is its best chunk's and files rank by it, ties in chunk order (as `top_hits`' stable sort breaks
them; checked against `top_hits` on every query), a file scoring 0 never ranked (`top_hits` never returns
such a chunk). recall@1, recall@5 and MRR@10 (reciprocal rank, 0 past 10) over the queries, for
embedding only (1/0), keyword only (0/1), and hybrid 0.5/0.5 to 0.9/0.1 (0.7/0.3 is the gateway's default,
EMBEDDING_WEIGHT/TEXT_WEIGHT); each hybrid's paired difference to the default (mean over queries, and a
95% bootstrap interval, queries resampled). Then embedding only and 0.7/0.3 again with the chunks and the
queries embedded by the fp32 torch reference (routers/features/minilm.py `encode`, transformers; it cuts a
text at 256 tokens where the int8 encoder averages windows, which only a query or chunk past 254 tokens
sees; their counts are in the report), for the int8 encoder's quality cost, and the cosine of each
text's int8 embedding to its fp32 one (the lowest also among texts within one window alone).

Speed, on this machine, `--threads` threads (default 1: torch's intra-op threads and, through threadpoolctl,
numpy's BLAS; ONNX Runtime is held at one thread by rankers/onnx_bert.py), wall clock (time.perf_counter)
and this thread's CPU clock (time.thread_time; wall above CPU is time other processes held the core):
- ingestion: `chunks()` over every output, and `encode` over the chunks in ingestion's batches, as chunks
  per second and tokens per second (the chunks' WordPiece tokens, [CLS]/[SEP] aside);
- query embedding: `encode([instruction])` per query, p50/p99 in ms;
- `StoreIndex.build` (median of 3) and search (`scores` + `top_hits` for 10 results, no filter; p50/p99 in
  ms over the queries, for the default 0.7/0.3 and for embedding only, which skips BM25) on the corpus's
  store and on a store of ~20,000 chunks (`--large-chunks`: the corpus's chunks, texts and embeddings
  repeated under other file ids), so the scaling in chunks shows.
The fp32 reference's encoding time is recorded for scale only (batches of 64, padded).

A full run (617 queries, ~2,000 chunks) takes about 5 minutes on one core, most of it the fp32 reference.

Writes bench/results/vector_search.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `bench`, `gateway` and `storage` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, RESULTS, THREADS_HELP, command, machine_info, pct, write_report  # noqa: E402
from bench.vector_search_quality import DEFAULT, LIMIT, RANKINGS, cosines, file_starts, paired, quality  # noqa: E402
from gateway.passages import WINDOW_TOKENS, Chunking, PassageEncoder  # noqa: E402
from gateway.vector_ingest import ENCODE_BATCH  # noqa: E402
from gateway.vector_search import (  # noqa: E402
    Ranking,
    StoreIndex,
    top_hits,
)
from storage.vector_stores import StoredChunks  # noqa: E402

OUT = RESULTS / "vector_search.json"
OUTPUTS = DATA / "alpaca_eval_outputs" / "outputs.jsonl"
CORPUS_MODEL = "gpt4_1106_preview"
LARGE_STORE_CHUNKS = 20_000
FP32_RANKINGS = ("embedding_only", DEFAULT)
BUILD_REPS = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="at most this many instructions (default: all)")
    parser.add_argument("--model", default=CORPUS_MODEL, help="whose outputs make the corpus")
    parser.add_argument("--large-chunks", type=int, default=LARGE_STORE_CHUNKS,
                        help="chunks of the replicated store searched for scaling")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples for the paired intervals")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    return parser.parse_args(argv)


def load_pairs(path: Path, model: str, docs: int | None) -> tuple[list[tuple[str, str]], dict]:
    """(instruction, model's output) in the file's order of instructions, the first `docs` of them."""
    instructions: dict[str, None] = {}
    outputs: dict[str, str] = {}
    with path.open() as file:
        for line in file:
            row = json.loads(line)
            instructions.setdefault(row["instruction"], None)
            if row["model"] == model:
                outputs[row["instruction"]] = row["output"]
    if not outputs:
        sys.exit(f"no outputs of model {model!r} in {path}")
    answered = [q for q in instructions if q in outputs and outputs[q].strip()]
    pairs = [(q, outputs[q]) for q in answered][:docs]
    return pairs, {"instructions_in_file": len(instructions), "answered_by_model": len(answered)}


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def latency_ms(walls: Sequence[float], cpus: Sequence[float]) -> dict:
    return {"p50_ms": round(pct(list(walls), 50) * 1e3, 3), "p99_ms": round(pct(list(walls), 99) * 1e3, 3),
            "cpu_p50_ms": round(pct(list(cpus), 50) * 1e3, 3), "cpu_p99_ms": round(pct(list(cpus), 99) * 1e3, 3),
            "mean_ms": round(statistics.fmean(walls) * 1e3, 3)}


def store_of(pieces: Sequence[Sequence[str]], embeddings: np.ndarray, prefix: str = "") -> StoredChunks:
    """The chunks as the store reads them back: by file id, then position (ids sort in file order)."""
    file_ids = [f"{prefix}file-{i:05d}" for i, parts in enumerate(pieces) for _ in parts]
    positions = [p for parts in pieces for p in range(len(parts))]
    texts = [text for parts in pieces for text in parts]
    return StoredChunks(1, file_ids, positions, texts, np.ascontiguousarray(embeddings, dtype=np.float32))


# --- ingestion

def chunk_corpus(encoder: PassageEncoder, outputs: Sequence[str]) -> tuple[list[list[str]], dict]:
    start = clocks()
    pieces = [encoder.chunks(text, Chunking()) for text in outputs]
    wall, cpu = since(start)
    return pieces, {"files": len(outputs), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                    "ms_per_file": round(wall / len(outputs) * 1e3, 3)}


def token_counts(encoder: PassageEncoder, texts: Sequence[str]) -> np.ndarray:
    tokenizer = encoder._tokenizer  # the counting tokenizer chunks() and encode() read
    return np.array([len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)])


def ingest_embeddings(encoder: PassageEncoder, pieces: Sequence[Sequence[str]]) -> tuple[np.ndarray, float, float]:
    """Every file's chunks embedded in ingestion's batches; (embeddings, wall s, CPU s)."""
    vectors = []
    start = clocks()
    for parts in pieces:
        for i in range(0, len(parts), ENCODE_BATCH):
            vectors.append(encoder.encode(parts[i:i + ENCODE_BATCH]))
    wall, cpu = since(start)
    return np.concatenate(vectors), wall, cpu


def embed_queries(encoder: PassageEncoder, queries: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Each query alone, as a search embeds it; its latency."""
    encoder.encode(queries[:2])  # warm
    vectors, walls, cpus = [], [], []
    for query in queries:
        start = clocks()
        vectors.append(encoder.encode([query])[0])
        wall, cpu = since(start)
        walls.append(wall)
        cpus.append(cpu)
    return np.stack(vectors), latency_ms(walls, cpus)


# --- speed

def build_time(chunks: StoredChunks) -> tuple[StoreIndex, dict]:
    walls, cpus, index = [], [], None
    for _ in range(BUILD_REPS):
        start = clocks()
        index = StoreIndex.build(chunks)
        wall, cpu = since(start)
        walls.append(wall)
        cpus.append(cpu)
    assert index is not None
    nnz = index.term_weights.nnz if index.term_weights is not None else 0
    terms = int(np.count_nonzero(np.diff(index.term_weights.indptr))) if index.term_weights is not None else 0
    return index, {"chunks": len(chunks.texts), "build_ms": round(statistics.median(walls) * 1e3, 2),
                   "build_cpu_ms": round(statistics.median(cpus) * 1e3, 2), "distinct_hashed_terms": terms,
                   "term_weight_nonzeros": nnz, "add_one_file": add_one_file_time(chunks),
                   "index_mb": round((chunks.embeddings.nbytes + nnz * 8) / 1e6, 2)}  # fp32 value + int32 row


def add_one_file_time(chunks: StoredChunks) -> dict:
    """What a search pays after one more file completed in a store: `StoreIndex.updated` from the index
    without that file (the others' segments kept), against building the whole index again."""
    last = chunks.file_ids[-1]
    first = chunks.file_ids.index(last)
    before = StoreIndex.build(StoredChunks(chunks.version, chunks.file_ids[:first], chunks.positions[:first],
                                           chunks.texts[:first], chunks.embeddings[:first]))
    fresh = StoredChunks(chunks.version + 1, chunks.file_ids[first:], chunks.positions[first:],
                         chunks.texts[first:], chunks.embeddings[first:])
    completed = dict.fromkeys(dict.fromkeys(chunks.file_ids))  # every file, added at no particular time
    walls, cpus = [], []
    for _ in range(BUILD_REPS):
        start = clocks()
        grown = before.updated(chunks.version + 1, completed, fresh)
        wall, cpu = since(start)
        walls.append(wall)
        cpus.append(cpu)
    assert grown.chunks.texts == StoreIndex.build(chunks).chunks.texts
    return {"file_chunks": len(fresh.texts), "update_ms": round(statistics.median(walls) * 1e3, 2),
            "update_cpu_ms": round(statistics.median(cpus) * 1e3, 2)}


def search_latency(index: StoreIndex, vectors: np.ndarray, queries: Sequence[str], ranking: Ranking) -> dict:
    """`scores` + `top_hits` for LIMIT results, as VectorStores.search runs them for one store and query."""
    def allowed(_store: str, _file: str) -> bool:
        return True

    def search(vector: np.ndarray, query: str) -> int:
        scores = index.scores(vector, query, ranking)
        return len(top_hits([("vs", index, scores)], allowed, LIMIT, ranking.score_threshold))

    for vector, query in zip(vectors[:5], queries[:5], strict=True):  # warm
        search(vector, query)
    walls, cpus = [], []
    for vector, query in zip(vectors, queries, strict=True):
        start = clocks()
        search(vector, query)
        wall, cpu = since(start)
        walls.append(wall)
        cpus.append(cpu)
    return latency_ms(walls, cpus)


def replicated(pieces: Sequence[Sequence[str]], embeddings: np.ndarray, target: int) -> StoredChunks:
    chunks = sum(len(parts) for parts in pieces)
    copies = max(1, round(target / max(chunks, 1)))
    base = store_of(pieces, embeddings)
    file_ids = [f"copy{c:03d}-{f}" for c in range(copies) for f in base.file_ids]
    return StoredChunks(1, file_ids, base.positions * copies, base.texts * copies,
                        np.ascontiguousarray(np.tile(base.embeddings, (copies, 1))))


# --- the run

def summary(report: dict) -> str:
    lines = [f"corpus: {report['corpus']['model']} ({report['corpus']['files']} files, "
             f"{report['corpus']['chunks']} chunks), {report['corpus']['queries']} queries",
             f"{'ranking':<24}{'encoder':>8}{'R@1':>8}{'R@5':>8}{'MRR@10':>8}"]
    for encoder in ("int8", "fp32"):
        for name, row in report["quality"][encoder].items():
            lines.append(f"{name:<24}{encoder:>8}{row['recall@1']:>8.3f}{row['recall@5']:>8.3f}{row['mrr@10']:>8.3f}")
    best = report["quality"]["best_hybrid_int8"]
    lines.append(f"best hybrid (int8, MRR@10): {best['name']}, {best['mrr@10_vs_default']:+.4f} vs {DEFAULT}")
    speed = report["speed"]
    ingest = speed["ingestion"]
    lines.append(f"ingestion: chunks() {ingest['chunking']['wall_s']} s; encode {ingest['encode']['chunks_per_s']} "
                 f"chunks/s, {ingest['encode']['tokens_per_s']} tokens/s")
    lines.append(f"query embedding: p50 {speed['query_embedding']['p50_ms']} ms, "
                 f"p99 {speed['query_embedding']['p99_ms']} ms")
    for store in speed["stores"]:
        s = store["search"]
        lines.append(f"store of {store['chunks']} chunks: build {store['build_ms']} ms; search {DEFAULT} p50 "
                     f"{s[DEFAULT]['p50_ms']} / p99 {s[DEFAULT]['p99_ms']} ms, embedding only p50 "
                     f"{s['embedding_only']['p50_ms']} / p99 {s['embedding_only']['p99_ms']} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if not OUTPUTS.exists():
        print(f"skipped: {OUTPUTS} is absent (the shared data folder is expected at {DATA})")
        return None
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        report = run(args, argv)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_report(OUT, report)
    print(summary(report))
    print(f"wrote {OUT} ({report['wall_s']} s)")
    return report


def run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    pairs, counts = load_pairs(OUTPUTS, args.model, args.docs)
    queries = [q for q, _ in pairs]
    outputs = [a for _, a in pairs]
    encoder = PassageEncoder()

    start = clocks()
    encoder.encode(["warm up"])  # loads the tokenizer and builds the int8 graph
    load_s = since(start)[0]
    pieces, chunking = chunk_corpus(encoder, outputs)
    kept = [i for i, parts in enumerate(pieces) if parts]  # a file of no chunk is no answer to find
    counts["without_chunks"] = len(pieces) - len(kept)
    pairs, pieces = [pairs[i] for i in kept], [pieces[i] for i in kept]
    queries = [q for q, _ in pairs]
    texts = [text for parts in pieces for text in parts]
    tokens = token_counts(encoder, texts)
    embeddings, encode_wall, encode_cpu = ingest_embeddings(encoder, pieces)
    query_vectors, query_latency = embed_queries(encoder, queries)
    query_tokens = token_counts(encoder, queries)
    starts = file_starts(pieces)
    print(f"{len(pairs)} files, {len(texts)} chunks embedded in {encode_wall:.1f} s", flush=True)

    chunks = store_of(pieces, embeddings)
    index, corpus_build = build_time(chunks)
    int8_table, per_query = quality(index, starts, query_vectors, queries, list(RANKINGS))
    hybrids = [name for name in RANKINGS if name.startswith("hybrid_")]
    best = max(hybrids, key=lambda name: (int8_table[name]["mrr@10"], int8_table[name]["recall@1"],
                                          name == DEFAULT))  # a tie goes to the default
    print("int8 quality done", flush=True)

    from routers.features.minilm import encode as fp32_encode  # noqa: PLC0415  (torch + transformers)

    fp32_encode(["warm up"])
    start = clocks()
    fp32_chunks = fp32_encode(texts)
    fp32_chunk_wall, fp32_chunk_cpu = since(start)
    start = clocks()
    fp32_queries = fp32_encode(queries)
    fp32_query_wall = since(start)[0]
    fp32_index = StoreIndex.build(store_of(pieces, fp32_chunks))
    fp32_table, fp32_per_query = quality(fp32_index, starts, fp32_queries, queries, FP32_RANKINGS)
    chunk_cos = (embeddings * fp32_chunks).sum(axis=1)
    query_cos = (query_vectors * fp32_queries).sum(axis=1)
    print("fp32 quality done", flush=True)

    large = replicated(pieces, embeddings, args.large_chunks)
    large_index, large_build = build_time(large)
    stores = []
    for store_index, built in ((index, corpus_build), (large_index, large_build)):
        built["search"] = {name: search_latency(store_index, query_vectors, queries, RANKINGS[name])
                           for name in (DEFAULT, "embedding_only")}
        stores.append(built)

    windows = np.maximum(1, -(-tokens // WINDOW_TOKENS))
    per_file = np.array([len(parts) for parts in pieces])
    return {
        "command": command("bench.vector_search", argv),
        "machine": {**machine_info(), "blas_threads": args.threads, "onnxruntime_threads": 1},
        "data": {"file": str(OUTPUTS.relative_to(DATA.parent.parent)), **counts},
        "corpus": {"model": args.model, "files": len(pairs), "queries": len(queries), "chunks": len(texts),
                   "chunking": Chunking().public()["static"],
                   "chunks_per_file": {"mean": round(float(per_file.mean()), 2), "max": int(per_file.max())},
                   "tokens_per_chunk": {"mean": round(float(tokens.mean()), 1), "max": int(tokens.max())},
                   "chunks_over_one_window": int((tokens > WINDOW_TOKENS).sum()),
                   "query_tokens": {"mean": round(float(query_tokens.mean()), 1), "max": int(query_tokens.max()),
                                    "over_one_window": int((query_tokens > WINDOW_TOKENS).sum())}},
        "quality": {
            "int8": int8_table,
            "fp32": fp32_table,
            "default": DEFAULT,
            "best_hybrid_int8": {"name": best, "mrr@10": int8_table[best]["mrr@10"],
                                 "mrr@10_vs_default": round(int8_table[best]["mrr@10"]
                                                            - int8_table[DEFAULT]["mrr@10"], 4)},
            "int8_vs_default": paired(per_query, DEFAULT, args.bootstrap),
            "fp32_minus_int8": paired({"int8": per_query[DEFAULT], "fp32": fp32_per_query[DEFAULT]}, "int8",
                                      args.bootstrap),
            "fp32_minus_int8_embedding_only": paired({"int8": per_query["embedding_only"],
                                                      "fp32": fp32_per_query["embedding_only"]}, "int8",
                                                     args.bootstrap),
            "int8_fp32_cosine": {"chunks": cosines(chunk_cos, tokens), "queries": cosines(query_cos, query_tokens)},
        },
        "speed": {
            "encoder_load_s": round(load_s, 2),
            "ingestion": {
                "chunking": chunking,
                "encode": {"chunks": len(texts), "tokens": int(tokens.sum()),
                           "encoder_tokens": int((tokens + 2 * windows).sum()), "batch": ENCODE_BATCH,
                           "wall_s": round(encode_wall, 2), "cpu_s": round(encode_cpu, 2),
                           "chunks_per_s": round(len(texts) / encode_wall, 1),
                           "tokens_per_s": round(float(tokens.sum()) / encode_wall),
                           "ms_per_chunk": round(encode_wall / len(texts) * 1e3, 2)},
            },
            "query_embedding": query_latency,
            "stores": stores,
            "fp32_reference": {"chunks_wall_s": round(fp32_chunk_wall, 2), "chunks_cpu_s": round(fp32_chunk_cpu, 2),
                               "chunks_per_s": round(len(texts) / fp32_chunk_wall, 1),
                               "queries_wall_s": round(fp32_query_wall, 2), "batch": 64},
        },
    }


if __name__ == "__main__":
    main()
