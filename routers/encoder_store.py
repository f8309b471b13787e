"""Where the distilled static encoder lives and how it is made when missing.

Default file: var/routers/encoders/static-minilm-<dim>.npz (git-ignored; about a minute to rebuild), or
the file named by $PITSTOP_STATIC_ENCODER.
The token-frequency corpus is label-free text from training material only: RouterBench's and
LLMRouter's training prompts and AlpacaEval's instructions and answers, never evaluation prompts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from routers.data.catalog import REPO_ROOT, DataUnavailable, data_root, load_dataset
from routers.features.distill import distil
from routers.features.static import StaticEncoder

log = logging.getLogger("pitstop.routers")

DEFAULT_DIM = 256


def default_encoder_path(dim: int = DEFAULT_DIM) -> Path:
    if os.environ.get("PITSTOP_STATIC_ENCODER"):
        return Path(os.environ["PITSTOP_STATIC_ENCODER"])
    return REPO_ROOT / "var" / "routers" / "encoders" / f"static-minilm-{dim}.npz"


def distillation_corpus(root: Path | None = None) -> list[str]:
    root = root or data_root()
    texts: list[str] = []
    for name in ("routerbench", "llmrouter"):
        try:
            data = load_dataset(name, root)
        except DataUnavailable as error:
            log.warning("distillation corpus: %s", error)
            continue
        texts += [p for p, split in zip(data.prompts, data.splits, strict=True) if split == "train"]
    alpaca = root / "alpaca_eval_outputs" / "outputs.jsonl"
    if alpaca.is_file():
        rows = [json.loads(line) for line in alpaca.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts += sorted({r["instruction"] for r in rows}) + [r["output"] for r in rows]
    return texts


def load_or_distil(path: str | Path | None = None, dim: int = DEFAULT_DIM, root: Path | None = None) -> StaticEncoder:
    path = Path(path) if path else default_encoder_path(dim)
    if path.is_file():
        return StaticEncoder.load(path)
    log.warning("static encoder %s missing: distilling it from all-MiniLM-L6-v2", path)
    distil(distillation_corpus(root), dim=dim).save(path)
    return StaticEncoder.load(path)
