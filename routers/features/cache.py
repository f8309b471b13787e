"""Offline embedding cache for training and evaluation jobs (never used on the request path).

One store per encoder view under var/cache/embeddings/<name>/ (git-ignored): vectors keyed by the
sha1 of each text, so any subset or reordering of known texts is a lookup and only new texts are
encoded."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from routers.data.catalog import REPO_ROOT

CACHE_DIR = REPO_ROOT / "var" / "cache" / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _load(folder: Path) -> tuple[list[str], np.ndarray | None]:
    keys_path, vectors_path = folder / "keys.txt", folder / "vectors.npy"
    if not (keys_path.is_file() and vectors_path.is_file()):
        return [], None
    keys = keys_path.read_text().split()
    vectors = np.load(vectors_path)
    assert len(keys) == len(vectors), f"corrupt embedding cache {folder}"
    return keys, vectors


def cached(name: str, texts: Sequence[str], compute: Callable[[Sequence[str]], np.ndarray],
           cache_dir: Path | None = None) -> np.ndarray:
    folder = (cache_dir or CACHE_DIR) / name
    keys, vectors = _load(folder)
    row = {k: i for i, k in enumerate(keys)}
    wanted = [text_key(t) for t in texts]
    missing: dict[str, str] = {}
    for key, text in zip(wanted, texts, strict=True):
        if key not in row:
            missing.setdefault(key, text)
    if missing:
        new = compute(list(missing.values())).astype(np.float32)
        vectors = new if vectors is None else np.vstack([vectors, new])
        for key in missing:
            row[key] = len(row)
        keys = keys + list(missing)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy.tmp.npy", vectors)
        (folder / "vectors.npy.tmp.npy").replace(folder / "vectors.npy")
        (folder / "keys.txt").write_text("\n".join(keys))
    assert vectors is not None or not texts
    if not texts:
        return np.zeros((0, 384), np.float32)
    return vectors[[row[k] for k in wanted]]
