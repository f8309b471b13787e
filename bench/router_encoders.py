"""Encoder quality/latency trade-off for routing features: all-MiniLM-L6-v2 vs its distilled static table.

Latency: one request's embedding on one core (torch and BLAS limited to one thread). Fidelity: Spearman
correlation of pairwise cosine similarities and top-10 neighbour overlap against the transformer on
prompts the static table never saw (MMLU, GSM8K samples). Routing quality comes from the evaluation
reports (same router family on either encoder), if they exist. Writes bench/results/routers/encoders.json.

    python -m bench.router_encoders
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from routers.data.catalog import load_dataset
from routers.encoder_store import load_or_distil
from routers.features.cache import cached
from routers.features.featurizer import HEAD_CHARS
from routers.features.minilm import encode
from routers.features.text import focus
from routers.metrics import percentiles_ms

OUT = Path("bench/results/routers")


def _latency(fn, texts: list[str]) -> dict[str, float]:
    for text in texts[:5]:
        fn(text)
    seconds = []
    for text in texts:
        start = time.perf_counter()
        fn(text)
        seconds.append(time.perf_counter() - start)
    return percentiles_ms(seconds)


def _fidelity(static, texts: list[str]) -> dict[str, float]:
    teacher = cached("minilm-left", texts, lambda t: encode(t, side="left"))
    student = static.encode(texts)
    upper = np.triu_indices(len(texts), 1)
    sims_t, sims_s = teacher @ teacher.T, student @ student.T
    rho = spearmanr(sims_t[upper][::7], sims_s[upper][::7]).correlation
    nn_t, nn_s = np.argsort(-sims_t, 1)[:, 1:11], np.argsort(-sims_s, 1)[:, 1:11]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nn_t, nn_s, strict=True)])
    return {"pairwise_similarity_spearman": float(rho), "top10_neighbour_overlap": float(overlap),
            "prompts": len(texts)}


def _routing_rows() -> list[dict[str, object]]:
    rows = []
    for path in sorted(OUT.glob("*.json")):
        report = json.loads(path.read_text())
        for key in (k for k in report if k.startswith("result")):
            for row in report[key].get("summary", []):
                if "[MiniLM head]" in row["router"] or "[static head]" in row["router"]:
                    rows.append({"data": report.get("dataset"), "result": key, **row})
    return rows


def main() -> None:
    static = load_or_distil()
    rng = np.random.default_rng(0)
    report: dict[str, object] = {"encoder": static.meta, "latency_protocol": "one request, 1 thread, after warm-up"}
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        for name in ("routerbench", "mmlu"):
            data = load_dataset(name)
            texts = [data.prompts[i] for i in rng.choice(len(data), 150, replace=False)]
            report[f"latency_{name}"] = {
                "minilm_head_256_tokens": _latency(lambda t: encode([t], side="left"), texts),
                "static_head_and_focus": _latency(
                    lambda t: (static.encode_one(t[:HEAD_CHARS]), static.encode_one(focus(t))), texts),
                "mean_prompt_chars": float(np.mean([len(t) for t in texts])),
            }
    torch.set_num_threads(2)
    for name in ("mmlu", "gsm8k"):
        data = load_dataset(name)
        texts = [data.prompts[i] for i in rng.choice(len(data), min(1500, len(data)), replace=False)]
        report[f"fidelity_{name}"] = _fidelity(static, texts)
    report["routing"] = _routing_rows()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "encoders.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "routing"}, indent=2))


if __name__ == "__main__":
    main()
