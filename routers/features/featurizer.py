"""Turns prompts into a router's input: dense embedding views, prompt statistics, hashed n-grams.

A FeatureSpec names what a router uses and is stored in its artifact. Encoders:
- "static": the distilled static table (request-path speed), views "head" (task identity: the first
  HEAD_CHARS characters) and "focus" (the last question, routers/features/text.py);
- "minilm": the transformer itself, views "head" (first 256 tokens, the sentence-transformers default,
  what published routers use), "tail" (last 256 tokens) and "focus"; offline evaluation only,
  15-150 ms per request on one core;
- "none": statistics and n-grams only.
`transform` is the batch path (training, evaluation; transformer outputs cached on disk),
`transform_one` the request path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from routers.features.ngrams import ngram_buckets
from routers.features.static import StaticEncoder
from routers.features.text import STAT_NAMES, focus, prompt_stats

HEAD_CHARS = 1024  # enough to tell the task; tokenising a long prompt whole costs ~1 ms


@dataclass(frozen=True)
class FeatureSpec:
    encoder: str = "static"  # "static" | "minilm" | "none"
    views: tuple[str, ...] = ("head", "focus")
    stats: bool = True
    ngram_bits: int = 0  # 0: no n-grams

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FeatureSpec:
        return cls(str(d["encoder"]), tuple(d["views"]), bool(d["stats"]), int(d["ngram_bits"]))  # type: ignore[arg-type]


@dataclass
class Features:
    dense: np.ndarray  # (n, d) float32: embedding views then statistics
    sparse: sp.csr_matrix | None = None  # (n, 2**bits) hashed n-grams
    blocks: dict[str, slice] = field(default_factory=dict)  # name -> columns of `dense`

    def __len__(self) -> int:
        return len(self.dense)

    def rows(self, index: np.ndarray) -> Features:
        return Features(self.dense[index], None if self.sparse is None else self.sparse[index], self.blocks)

    def block(self, *names: str) -> np.ndarray:
        return np.hstack([self.dense[:, self.blocks[n]] for n in names])


def _minilm_view(prompts: Sequence[str], view: str) -> np.ndarray:
    from routers.features.cache import cached  # noqa: PLC0415  (offline path only)
    from routers.features.minilm import MAX_TOKENS, encode  # noqa: PLC0415
    from routers.tokens import count_tokens  # noqa: PLC0415

    head = cached("minilm-left", prompts, lambda texts: encode(texts, side="left"))
    if view == "head":
        return head
    # Only prompts longer than the window have a tail different from their head.
    long = [i for i, n in enumerate(count_tokens(prompts)) if n > MAX_TOKENS - 2]
    tail = head.copy()
    if long:
        tail[long] = cached("minilm-right", [prompts[i] for i in long],
                            lambda texts: encode(texts, side="right"))
    return tail


class Featurizer:
    def __init__(self, spec: FeatureSpec, encoder: StaticEncoder | None = None) -> None:
        assert spec.encoder != "static" or encoder is not None, "the static encoder needs its table"
        self.spec = spec
        self.encoder = encoder

    def _views(self, prompts: Sequence[str], focus_texts: Sequence[str]) -> list[np.ndarray]:
        if self.spec.encoder == "none":
            return []
        if self.spec.encoder == "minilm":
            by_view = {"head": (prompts, "head"), "tail": (prompts, "tail"), "focus": (focus_texts, "head")}
            return [_minilm_view(*by_view[view]) for view in self.spec.views]
        assert self.encoder is not None
        by_view = {"head": [p[:HEAD_CHARS] for p in prompts], "focus": focus_texts}
        return [self.encoder.encode(by_view[view]) for view in self.spec.views]

    def _assemble(self, views: list[np.ndarray], stats: np.ndarray | None, sparse: sp.csr_matrix | None) -> Features:
        parts, blocks, start = [], {}, 0
        names = list(self.spec.views) if self.spec.encoder != "none" else []
        for name, block in zip(names, views, strict=True):
            blocks[name] = slice(start, start + block.shape[1])
            start += block.shape[1]
            parts.append(block)
        if stats is not None:
            blocks["stats"] = slice(start, start + stats.shape[1])
            parts.append(stats)
        dense = np.hstack(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
        return Features(dense, sparse, blocks)

    def _ngrams(self, focus_texts: Sequence[str]) -> sp.csr_matrix | None:
        if not self.spec.ngram_bits:
            return None
        indptr, indices, values = [0], [], []
        for text in focus_texts:
            ids, vals = ngram_buckets(text, self.spec.ngram_bits)
            indices.append(ids)
            values.append(vals)
            indptr.append(indptr[-1] + len(ids))
        return sp.csr_matrix((np.concatenate(values) if values else np.zeros(0, np.float32),
                              np.concatenate(indices) if indices else np.zeros(0, np.int64), indptr),
                             shape=(len(focus_texts), 1 << self.spec.ngram_bits), dtype=np.float32)

    def transform(self, prompts: Sequence[str]) -> Features:
        focus_texts = [focus(p) for p in prompts]
        stats = (np.vstack([prompt_stats(p, f) for p, f in zip(prompts, focus_texts, strict=True)])
                 if self.spec.stats else None)
        return self._assemble(self._views(prompts, focus_texts), stats, self._ngrams(focus_texts))

    def transform_one(self, prompt: str) -> Features:
        focus_text = focus(prompt)
        if self.spec.encoder == "static":
            assert self.encoder is not None
            by_view = {"head": prompt[:HEAD_CHARS], "focus": focus_text}
            encoded: dict[str, np.ndarray] = {}  # a short one-question prompt is its own head and focus
            views = []
            for view in self.spec.views:
                text = by_view[view]
                if text not in encoded:
                    encoded[text] = self.encoder.encode_one(text)[None]
                views.append(encoded[text])
        elif self.spec.encoder == "minilm":  # the real transformer cost, not a cache lookup
            from routers.features.minilm import encode  # noqa: PLC0415

            by_view = {"head": (prompt, "left"), "tail": (prompt, "right"), "focus": (focus_text, "left")}
            views = [encode([by_view[v][0]], side=by_view[v][1]) for v in self.spec.views]
        else:
            views = []
        stats = prompt_stats(prompt, focus_text)[None] if self.spec.stats else None
        return self._assemble(views, stats, self._ngrams([focus_text]))


__all__ = ["STAT_NAMES", "FeatureSpec", "Featurizer", "Features"]
