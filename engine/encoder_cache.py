"""ImageFeatures: the vision encoder's output for the images a step's prefill chunks reach. An image is encoded
once, when the first chunk holding any of its feature tokens runs, and its features are kept until the chunk
that computes its last token, then dropped: an image whose tokens span chunks is spliced piece by piece from
one encoding. An image whose every token came from the prefix cache is never reached, so never encoded.
Keyed weakly by sequence, so a request that finishes or is aborted mid-image leaves nothing behind. The
features go in as transformers puts them (a masked scatter into the input embeddings): in place of the scaled
token embeddings at their rows (`spliced_embeddings`), as the first layer's input: after Gemma's sqrt(hidden)
embedding scale, which transformers applies inside the embedding, so image features are not scaled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import torch
from torch import nn

from engine.model.qwen3_vl import deepstack_hooks

if TYPE_CHECKING:
    from engine.model.vision import VisionEncoder
    from engine.sequence import Sequence

# (a sequence, the step's flat row of its first token this step, the positions [start, end) it computes)
Span = tuple["Sequence", int, int, int]


class ImageFeatures:
    def __init__(self, encoder: VisionEncoder, device: torch.device, dtype: torch.dtype) -> None:
        self.encoder = encoder
        self.device = device
        self.dtype = dtype
        self.features: WeakKeyDictionary[Sequence, dict[int, torch.Tensor]] = WeakKeyDictionary()
        self.images_encoded = 0  # images run through the encoder, ever (tests and benchmarks read it)

    def step_embeds(self, spans: list[Span]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(flat rows [R], features [R, hidden]) to put in place of those rows' token embeddings."""
        reached = [(seq, row, start, end, j) for seq, row, start, end in spans
                   for j, image in enumerate(seq.images) if image.offset < end and image.end > start]
        if not reached:
            return None
        self._encode([(seq, j) for seq, _, _, _, j in reached if j not in self.features.get(seq, {})])
        rows: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for seq, row, start, end, j in reached:
            image = seq.images[j]
            first, last = max(start, image.offset), min(end, image.end)
            rows.append(torch.arange(row + first - start, row + last - start))
            values.append(self.features[seq][j][first - image.offset: last - image.offset])
            if last == image.end:  # its prefill is done (recomputed after a preemption: encoded again)
                del self.features[seq][j]
        return torch.cat(rows).to(self.device), torch.cat(values)

    def _encode(self, missing: list[tuple[Sequence, int]]) -> None:
        if not missing:
            return
        with torch.inference_mode():
            encoded = self.encoder.encode([seq.images[j] for seq, j in missing], self.device, self.dtype)
        self.images_encoded += len(missing)
        for (seq, j), features in zip(missing, encoded, strict=True):
            self.features.setdefault(seq, {})[j] = features


@contextmanager
def spliced_embeddings(layers: Sequence[nn.Module], hidden_size: int, rows: torch.Tensor,
                       features: torch.Tensor) -> Iterator[None]:
    """While it lasts, the hidden states the first layer takes (its first argument) have `features` at `rows`
    (one forward pass). Rows wider than the hidden states carry Qwen3-VL's DeepStack features after theirs
    (engine/model/qwen3_vl.py), added to the first layers' outputs."""
    main = features if features.shape[1] == hidden_size else features[:, :hidden_size]

    def splice(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden.index_copy(0, rows, main.to(hidden.dtype)), *args[1:])

    handle = layers[0].register_forward_pre_hook(splice)
    try:
        if main is features:
            yield
        else:
            deepstack = features[:, hidden_size:].unflatten(1, (-1, hidden_size))
            with deepstack_hooks(layers, rows, deepstack):
                yield
    finally:
        handle.remove()
