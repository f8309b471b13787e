"""make_tiny_classifier: a small random decoder classifier (Qwen3ForSequenceClassification or
LlamaForSequenceClassification) written as a real Hugging Face folder, fully offline: the tiny causal model's
folder (engine/tiny_model.py: config, tokenizer) with its lm_head replaced by a `score` tensor [num_labels,
hidden], `num_labels` and `id2label` in the config, and a pad token (transformers pools the last non-pad token).
transformers' AutoModelForSequenceClassification loads it as it would a Hub classifier; the engine serves it
(engine/model/classifier.py). A tiny Qwen3-Reranker is make_tiny_model's causal Qwen3 with --hf-overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.tiny_model import TINY_FAMILIES, make_tiny_model

CLASSIFIER_FAMILIES = {"qwen3": "Qwen3ForSequenceClassification", "llama": "LlamaForSequenceClassification"}


def make_tiny_classifier(out_dir: str | Path, family: str = "qwen3", num_labels: int = 1, layers: int = 2,
                         hidden: int = 64, seed: int = 0, labels: list[str] | None = None) -> Path:
    """`labels`: id2label's names (default transformers' LABEL_i)."""
    if family not in CLASSIFIER_FAMILIES:
        raise ValueError(f"family must be one of {sorted(CLASSIFIER_FAMILIES)}")
    assert family in TINY_FAMILIES
    out = make_tiny_model(out_dir, layers=layers, hidden=hidden, seed=seed, family=family)
    weights = load_file(out / "model.safetensors")
    weights.pop("lm_head.weight", None)
    generator = torch.Generator().manual_seed(seed + 1)
    # Spread so labels differ clearly (a tiny random model's hidden states are small after the norm).
    weights["score.weight"] = torch.randn(num_labels, hidden, generator=generator) * (4.0 / math.sqrt(hidden))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    names = labels or [f"LABEL_{i}" for i in range(num_labels)]
    config.update(architectures=[CLASSIFIER_FAMILIES[family]], num_labels=num_labels,
                  id2label={str(i): name for i, name in enumerate(names)},
                  label2id={name: i for i, name in enumerate(names)})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
