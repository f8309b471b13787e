"""One long format for every routing data set, and the wide view that training and evaluation use.

Long: one row per (prompt, model) with the quality score, the real cost in USD and the answer length
in tokens when known. Wide: prompts x models matrices, NaN where a cell is missing (a model that was
not asked, or a score the source left empty), so no loader has to invent a value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

LONG_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("task", pa.string()),  # benchmark or subject; for reports and task-aware training
        ("split", pa.string()),  # "train" / "test" where the source publishes a split, else null
        ("model", pa.string()),
        ("quality", pa.float64()),  # in [0, 1]; null = missing, never 0
        ("cost_usd", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),  # null when the source has no answer text
        ("weight", pa.float64()),  # importance weight (1 / propensity for logged traffic)
        ("answer", pa.string()),  # the short answer the reply commits to (routers/verify.py), else null
    ]
)


def long_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    defaults = {"split": None, "cost_usd": None, "prompt_tokens": None, "output_tokens": None, "weight": 1.0,
                "answer": None}
    return pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=LONG_SCHEMA)


@dataclass(frozen=True)
class Prices:
    """USD per token, per model (input, output)."""

    input: dict[str, float]
    output: dict[str, float]


@dataclass(frozen=True)
class RoutingData:
    """Prompts x models. Row order is the order prompts first appear in the long table."""

    name: str
    prompt_ids: list[str]
    prompts: list[str]
    tasks: np.ndarray  # (n,) object
    splits: np.ndarray  # (n,) object, "" where the source has no split
    models: list[str]
    quality: np.ndarray  # (n, m) float, NaN = missing
    cost: np.ndarray  # (n, m) USD, NaN = unknown
    output_tokens: np.ndarray  # (n, m), NaN = unknown
    prompt_tokens: np.ndarray  # (n,)
    weight: np.ndarray  # (n, m)
    answers: np.ndarray  # (n, m) object: each reply's short answer (routers/verify.py), None if none
    source: dict[str, str] = field(default_factory=dict)  # path -> sha256, the training data reference

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: np.ndarray | Sequence[int]) -> RoutingData:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in rows],
            prompts=[self.prompts[i] for i in rows],
            tasks=self.tasks[rows],
            splits=self.splits[rows],
            quality=self.quality[rows],
            cost=self.cost[rows],
            output_tokens=self.output_tokens[rows],
            prompt_tokens=self.prompt_tokens[rows],
            weight=self.weight[rows],
            answers=self.answers[rows],
        )

    def split(self, name: str) -> RoutingData:
        return self.subset(self.splits == name)

    def complete(self) -> RoutingData:
        """Only the prompts every model has a score for."""
        return self.subset(~np.isnan(self.quality).any(axis=1))

    def with_models(self, models: Sequence[str]) -> RoutingData:
        cols = [self.models.index(m) for m in models]
        return replace(self, models=list(models), quality=self.quality[:, cols], cost=self.cost[:, cols],
                       output_tokens=self.output_tokens[:, cols], weight=self.weight[:, cols],
                       answers=self.answers[:, cols])

    def model_index(self, model: str) -> int:
        return self.models.index(model)


def to_wide(table: pa.Table, name: str | None = None, source: dict[str, str] | None = None) -> RoutingData:
    columns = table.to_pydict()
    models = sorted(set(columns["model"]))
    model_col = {m: j for j, m in enumerate(models)}
    row_of: dict[str, int] = {}
    prompts: list[str] = []
    tasks: list[str] = []
    splits: list[str] = []
    prompt_tokens: list[float] = []
    for pid, prompt, task, split, tokens in zip(columns["prompt_id"], columns["prompt"], columns["task"],
                                                columns["split"], columns["prompt_tokens"], strict=True):
        if pid not in row_of:
            row_of[pid] = len(prompts)
            prompts.append(prompt)
            tasks.append(task or "")
            splits.append(split or "")
            prompt_tokens.append(np.nan if tokens is None else float(tokens))
    n, m = len(prompts), len(models)
    quality, cost, output_tokens = (np.full((n, m), np.nan) for _ in range(3))
    weight = np.ones((n, m))
    answers = np.full((n, m), None, dtype=object)
    for pid, model, q, c, out, w, a in zip(columns["prompt_id"], columns["model"], columns["quality"],
                                           columns["cost_usd"], columns["output_tokens"], columns["weight"],
                                           columns["answer"], strict=True):
        i, j = row_of[pid], model_col[model]
        quality[i, j] = np.nan if q is None else q
        cost[i, j] = np.nan if c is None else c
        output_tokens[i, j] = np.nan if out is None else out
        weight[i, j] = 1.0 if w is None else w
        answers[i, j] = a
    dataset = name or (columns["dataset"][0] if n else "empty")
    return RoutingData(dataset, list(row_of), prompts, np.array(tasks, dtype=object),
                       np.array(splits, dtype=object), models, quality, cost, output_tokens,
                       np.array(prompt_tokens), weight, answers, dict(source or {}))


def file_digest(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 per file: how an artifact names its training data without copying it."""
    digests = {}
    for path in sorted(paths):
        digests[str(path)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digests
