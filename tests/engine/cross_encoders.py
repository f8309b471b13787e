"""Tiny cross-encoders for the tests (engine/tiny_cross_encoder.py) and transformers' own scores on them:
AutoModelForSequenceClassification and the checkpoint's tokenizer, one pair at a time, no padding."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

QUERY = "how does a priority queue order its items"
DOCUMENTS = [
    "heapq keeps the smallest item first, a priority queue on a list",
    "Return a random integer N such that a <= N <= b.",
    "A FIFO queue: the first item put is the first got.",
    "Encode the bytes-like object s using Base64 and return the encoded bytes.",
    "queue",
    "Sort the list in place, stable: equal items keep their order; a key function orders by its result.",
]


def reference_scores(model_dir: Path, pairs: list[tuple[str, str]], truncation: int | None = None) -> list[float]:
    """sigmoid(logit) of each pair, as transformers computes it on the pair alone."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    scores = []
    with torch.inference_mode():
        for query, document in pairs:
            inputs = tokenizer(query, document, return_tensors="pt", truncation=truncation is not None,
                               max_length=truncation)
            scores.append(torch.sigmoid(model(**inputs).logits[0, 0]).item())
    return scores
