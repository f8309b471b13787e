"""Output-length data in one format: one row per (prompt, model) with the answer's length in tokens.

Sources (read from the shared data folder, never copied): `alpaca_eval` (open-ended instructions,
10 chat models' real answers), `routerbench` (11 models on ARC, MBPP, Winogrande), `gsm8k` (two
models' answers), and `outcomes:<export file>` (Pitstop's own outcome export). Lengths are counted
with routers/tokens.py, the one tokenizer every Pitstop count uses."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rankers.names import canonical_model
from routers.data.catalog import DataUnavailable, data_root, load_long
from routers.tokens import count_tokens

ALPACA_FILE = "alpaca_eval_outputs/outputs.jsonl"
DATASETS = ("alpaca_eval", "routerbench", "gsm8k")


@dataclass(frozen=True)
class LengthData:
    """Parallel columns, one entry per (prompt, model) answer."""

    name: str
    prompt_ids: np.ndarray  # (n,) object: the unit of every split
    prompts: np.ndarray  # (n,) object
    models: np.ndarray  # (n,) object
    output_tokens: np.ndarray  # (n,) int
    source: dict[str, str]  # file -> sha256: the training data reference

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, index: np.ndarray) -> LengthData:
        return replace(self, prompt_ids=self.prompt_ids[index], prompts=self.prompts[index],
                       models=self.models[index], output_tokens=self.output_tokens[index])

    def with_prompts(self, prompt_ids: set[str]) -> LengthData:
        return self.rows(np.array([p in prompt_ids for p in self.prompt_ids], dtype=bool))

    def with_models(self, models: set[str]) -> LengthData:
        return self.rows(np.array([m in models for m in self.models], dtype=bool))

    @property
    def model_names(self) -> list[str]:
        return sorted(set(self.models.tolist()))

    @property
    def unique_prompt_ids(self) -> list[str]:
        return sorted(set(self.prompt_ids.tolist()))


def _digest(path: Path) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}


def _make(name: str, ids: list[str], prompts: list[str], models: list[str], lengths: list[int],
          source: dict[str, str]) -> LengthData:
    return LengthData(name, np.array(ids, dtype=object), np.array(prompts, dtype=object),
                      np.array([canonical_model(m) for m in models], dtype=object),
                      np.asarray(lengths, dtype=np.int64), source)


def _prompt_id(name: str, prompt: str) -> str:
    return f"{name}.{hashlib.sha1(prompt.encode()).hexdigest()[:12]}"


def load_alpaca_eval(root: Path, limit_prompts: int | None = None) -> LengthData:
    path = root / ALPACA_FILE
    if not path.is_file():
        raise DataUnavailable(f"alpaca_eval: {path} missing; the shared data lives in ../shared/data")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if limit_prompts is not None:
        keep = set(sorted({r["instruction"] for r in records})[:limit_prompts])
        records = [r for r in records if r["instruction"] in keep]
    lengths = count_tokens([r["output"] for r in records])
    return _make("alpaca_eval", [_prompt_id("alpaca", r["instruction"]) for r in records],
                 [r["instruction"] for r in records], [r["model"] for r in records], lengths, _digest(path))


def load_routing_lengths(name: str, root: Path) -> LengthData:
    """RouterBench / GSM8K answers through the router data loaders (they count tokens already)."""
    table, files = load_long(name, root)
    cols = table.select(["prompt_id", "prompt", "model", "output_tokens"]).to_pydict()
    keep = [i for i, n in enumerate(cols["output_tokens"]) if n is not None]
    source: dict[str, str] = {}
    for f in files:
        source |= _digest(f)
    return _make(name, [f"{name}.{cols['prompt_id'][i]}" for i in keep], [cols["prompt"][i] for i in keep],
                 [cols["model"][i] for i in keep], [cols["output_tokens"][i] for i in keep], source)


def load_outcome_lengths(path: Path) -> LengthData:
    """Pitstop's outcome export: every served request that completed has a real length (no feedback needed)."""
    if not path.is_file():
        raise DataUnavailable(f"outcome export {path} missing")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415

        records = pq.read_table(path).to_pylist()
    else:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if r.get("prompt") and r.get("completion_tokens") is not None
               and r.get("status", "ok") in (None, "ok") and r.get("finish_reason") in (None, "stop")]
    return _make("outcomes", [_prompt_id("outcomes", r["prompt"]) for r in records],
                 [r["prompt"] for r in records], [r["model"] for r in records],
                 [int(r["completion_tokens"]) for r in records], _digest(path))


def load_lengths(name: str, root: Path | None = None, limit_prompts: int | None = None) -> LengthData:
    root = root or data_root()
    if name == "alpaca_eval":
        return load_alpaca_eval(root, limit_prompts)
    if name in ("routerbench", "gsm8k"):
        return load_routing_lengths(name, root)
    if name.startswith("outcomes:"):
        return load_outcome_lengths(Path(name.removeprefix("outcomes:")))
    raise ValueError(f"unknown length data set {name!r}; known: {list(DATASETS)} or outcomes:<export file>")


def concat(parts: list[LengthData]) -> LengthData:
    source: dict[str, str] = {}
    for p in parts:
        source |= p.source
    return LengthData("+".join(p.name for p in parts),
                      *(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("prompt_ids", "prompts", "models", "output_tokens")), source)
