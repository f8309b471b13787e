"""The rotary positions of a step's tokens, where they are not the tokens' indices. LongRoPE: a long prompt's
tokens read the second, all-long table (ModelConfig.long_rope_offset). M-RoPE (Qwen2.5-VL): each token has 3
position ids (temporal, height, width), as transformers' `get_rope_index` gives them: a text token its running
position thrice; an image's tokens their (t, h, w) place in its merged grid, offset by the position reached
before it; the text after an image continues from the image's largest id + 1. So a prompt's positions are a pure
function of its tokens and its images' grids (cached K/V of a prefix stays valid), computed once a sequence; a
token past the prompt (decoding, or recomputed after preemption) is at its index + the sequence's `rope_delta`
(the table's largest id + 1 - the prompt's length), its 3 ids equal."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import torch

from engine.image_inputs import ImageInput
from engine.model.config import ModelConfig

if TYPE_CHECKING:
    from engine.sequence import Sequence


def mrope_prompt_positions(num_prompt_tokens: int, images: Seq[ImageInput], merge: int) -> tuple[torch.Tensor, int]:
    """([3, num_prompt_tokens] position ids, rope_delta) of a prompt whose images lie where `images` say."""
    parts: list[torch.Tensor] = []
    at = position = 0
    for image in sorted(images, key=lambda i: i.offset):
        assert image.grid_thw is not None, "an M-RoPE model's image carries its patch grid"
        text = image.offset - at
        parts.append(torch.arange(position, position + text).expand(3, text))
        position += text
        t, h, w = image.grid_thw[0], image.grid_thw[1] // merge, image.grid_thw[2] // merge
        grid = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        parts.append(torch.stack(grid).reshape(3, -1) + position)
        position += max(h, w)  # transformers' step past an image: not t (a still image's t is 1)
        at = image.end
    parts.append(torch.arange(position, position + num_prompt_tokens - at).expand(3, -1))
    table = torch.cat(parts, dim=1)
    return table, int(table.max()) + 1 - num_prompt_tokens if num_prompt_tokens else 0


class RopePositions:
    """`step(batch sequences, their [start, end) ranges, flat positions)` -> what the model's RotaryEmbedding
    takes: [T] (LongRoPE offsets added) or, under M-RoPE, [3, T]."""

    def __init__(self, config: ModelConfig, merge_size: int = 2) -> None:
        self.config = config
        self.merge = merge_size
        self.prompts: WeakKeyDictionary[Sequence, tuple[torch.Tensor, int]] = WeakKeyDictionary()

    def step(self, seqs: Seq[Sequence], lens: Seq[int], positions: torch.Tensor) -> torch.Tensor:
        if self.config.rope_type == "longrope":
            offsets = [self.config.long_rope_offset(seq.num_prompt_tokens) for seq in seqs]
            return positions + torch.tensor(offsets).repeat_interleave(torch.tensor(list(lens)))
        if not self.config.mrope_section:
            return positions
        rows = positions.expand(3, -1).clone()
        at = 0
        for seq, n in zip(seqs, lens, strict=True):
            if seq.images:  # text-only: positions thrice
                table, delta = self.prompt(seq)
                index = positions[at: at + n]
                in_prompt = index < table.shape[1]
                rows[:, at: at + n] = torch.where(in_prompt, table[:, index.clamp(max=table.shape[1] - 1)],
                                                  index + delta)
            at += n
        return rows

    def prompt(self, seq: Sequence) -> tuple[torch.Tensor, int]:
        cached = self.prompts.get(seq)
        if cached is None:
            cached = self.prompts[seq] = mrope_prompt_positions(seq.num_prompt_tokens, seq.images, self.merge)
        return cached
