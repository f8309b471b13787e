"""Whether a model folder is a decoder used as a classifier or scorer (vLLM's sequence-classification models):
its config.json names a `*ForSequenceClassification` architecture of a decoder family the engine runs (Llama,
Mistral, Qwen2, Qwen3: the base model plus a `score` linear [num_labels, hidden] on the last token's final
hidden state), or, with vLLM's `classifier_from_token` override, a causal LM whose head is made of lm_head's
rows for those tokens (Qwen3-Reranker: `is_original_qwen3_reranker`, the "yes" row minus the "no" row, one
label). Read without torch, so the CLI and the gateway's config check stay light."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The decoder families whose *ForSequenceClassification the engine's own model code runs (engine/model/llama.py).
DECODER_CLASSIFIER_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass(frozen=True)
class ClassifierHead:
    num_labels: int
    labels: tuple[str, ...]  # id2label in index order (transformers' LABEL_i where the config names none)
    # vLLM's `classifier_from_token`: the head is lm_head's rows for these tokens rather than a `score` tensor.
    from_tokens: tuple[str, ...] = ()
    # vLLM's `from_2_way_softmax` (Qwen3-Reranker's): one label, the second token's row minus the first's, so
    # sigmoid(score) is the second token's softmax probability over the two.
    two_way: bool = False
    qwen3_reranker: bool = False  # queries and documents go into Qwen3-Reranker's prompt template


def read_config(model_dir: str | Path) -> dict | None:
    """The folder's config.json as a dict; None where there is none or it is not a JSON object."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def is_decoder_classifier(config: dict) -> bool:
    architectures = config.get("architectures") or []
    return config.get("model_type") in DECODER_CLASSIFIER_TYPES and any(
        str(name).endswith("ForSequenceClassification") for name in architectures)


def classifier_head(model_dir: str | Path) -> ClassifierHead | None:
    """The folder's head where it is a decoder classifier, else None; a ValueError for a head it cannot build."""
    config = read_config(model_dir)
    if config is None or not is_decoder_classifier(config):
        return None
    tokens = config.get("classifier_from_token") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError("classifier_from_token must be a list of token strings")
    qwen3_reranker = bool(config.get("is_original_qwen3_reranker"))
    two_way = qwen3_reranker or config.get("method") == "from_2_way_softmax"
    if two_way and len(tokens) != 2:
        raise ValueError("a two-way head (is_original_qwen3_reranker) needs two classifier_from_token tokens, "
                         f"the 'no' one then the 'yes' one; got {tokens}")
    if tokens:
        num_labels = 1 if two_way else len(tokens)
    else:
        num_labels = int(config.get("num_labels", len(config.get("id2label") or {}) or 2))  # transformers' default
    if num_labels < 1:
        raise ValueError(f"num_labels must be at least 1, got {num_labels}")
    names = config.get("id2label") or {}
    labels = tuple(str(names.get(str(i), names.get(i, f"LABEL_{i}"))) for i in range(num_labels))
    return ClassifierHead(num_labels, labels, tuple(tokens), two_way, qwen3_reranker)
