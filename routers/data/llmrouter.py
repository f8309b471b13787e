"""LLMRouter's score table (`{question, scores: {model: score}}`) with its price list ($ per M tokens).

The table has no answers, so answer lengths are unknown: cost is the listed input price times the
prompt's tokens plus the listed output price times ASSUMED_OUTPUT_TOKENS (the choice rule's default),
the same for every model, so only prices and prompt length separate the models' costs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from routers.choice import DEFAULT_OUTPUT_TOKENS
from routers.data.table import Prices, long_table
from routers.tokens import count_tokens

ASSUMED_OUTPUT_TOKENS = DEFAULT_OUTPUT_TOKENS


def llmrouter_files(root: Path) -> list[Path]:
    return [root / "train.json", root / "test.json", root / "llm_prices.json"]


def llmrouter_prices(root: str | Path) -> Prices:
    listed = json.loads((Path(root) / "llm_prices.json").read_text(encoding="utf-8"))
    return Prices({m: p["input_price"] / 1e6 for m, p in listed.items()},
                  {m: p["output_price"] / 1e6 for m, p in listed.items()})


def load_llmrouter(root: str | Path) -> pa.Table:
    root = Path(root)
    prices = llmrouter_prices(root)
    rows = []
    for split in ("train", "test"):
        records = json.loads((root / f"{split}.json").read_text(encoding="utf-8"))
        tokens = count_tokens([r["question"] for r in records])
        for i, (r, n_tokens) in enumerate(zip(records, tokens, strict=True)):
            cluster = r.get("cluster_id")
            for model, score in r["scores"].items():
                if model not in prices.input:
                    raise ValueError(f"{model!r} has a score but no price in llm_prices.json")
                cost = prices.input[model] * n_tokens + prices.output[model] * ASSUMED_OUTPUT_TOKENS
                rows.append({"dataset": "llmrouter", "prompt_id": f"llmrouter.{split}.{i}", "prompt": r["question"],
                             "task": "" if cluster is None else f"cluster{cluster}", "split": split,
                             "model": model, "quality": score, "cost_usd": cost, "prompt_tokens": n_tokens})
    return long_table(rows)
