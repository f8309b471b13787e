"""Whether a model folder is a cross-encoder (a reranker): its config.json names a *ForSequenceClassification
architecture with one label. Read without torch, so the CLI and the gateway's config check stay light."""

from __future__ import annotations

from pathlib import Path

from engine.classifier_config import is_decoder_classifier, read_config

# `pitstop engine make-tiny-model --family` names -> the checkpoint family (engine/tiny_cross_encoder.py).
CROSS_ENCODER_FAMILIES = {"bert_cross_encoder": "bert", "roberta_cross_encoder": "roberta",
                          "xlm_roberta_cross_encoder": "xlm-roberta"}


def cross_encoder_config(model_dir: str | Path) -> dict | None:
    """The folder's config.json where it is a cross-encoder, else None (no config, or another model)."""
    config = read_config(model_dir)
    if config is None:
        return None
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 2)  # transformers' default: 2
    architectures = config.get("architectures") or []
    if labels == 1 and any(str(name).endswith("ForSequenceClassification") for name in architectures) \
            and not is_decoder_classifier(config):  # a decoder's runs on the engine (engine/decoder_scorer.py)
        return config
    return None
