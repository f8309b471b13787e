"""Qwen3-VL (Qwen3VLForConditionalGeneration, `model_type: qwen3_vl`) and its MoE (Qwen3VLMoeForConditionalGeneration,
`qwen3_vl_moe`), as transformers 5.25 runs them: what sets them apart from Qwen2.5-VL.

- The language model is Qwen3 (per-head q/k norms, no q/k/v biases) or Qwen3-MoE (its sparse block always
  renormalises the chosen experts' weights), read from `text_config`.
- Its M-RoPE is interleaved (`interleaved_mrope_rows`): transformers' `recomposition_frequencies` takes every
  rotary frequency from the temporal row but for every third from index 1 (height, the first 3 * section[1]
  frequencies) and from index 2 (width, the first 3 * section[2]), where Qwen2.5-VL's takes contiguous sections.
  The prompt's position ids are Qwen2.5-VL's (engine/rope_positions.py): a still image's grid offset by the
  position reached, the text after it max(h, w) further.
- DeepStack: the vision tower (transformers' own Qwen3VLVisionModel) also returns, for each of its
  `deepstack_visual_indexes` layers, a merged feature per image token; transformers adds the k-th to the hidden
  states the language model's k-th layer outputs, at the image tokens. The engine carries an image token's
  features as one row [main | deepstack 1 | ... | deepstack k] (`VisionEncoder.encode`), so chunked prefill,
  the encoder cache and tensor-parallel steps move them as any image's; `deepstack_hooks` splits the row and adds
  each part after its layer, for the rows this step computes. A prefix-cache hit past an image needs nothing:
  the cached K/V of its tokens were computed with the injections.
- The MoE releases store their stacked experts transposed ([experts, hidden, 2 * intermediate], transformers'
  conversion mapping for `qwen3_vl_moe`): `checkpoint_tensor` turns them to the engine's layout."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# A Qwen3-VL-MoE checkpoint's stacked expert tensors (under the language model), stored [experts, in, out].
_TRANSPOSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def interleaved_mrope_rows(section: Sequence[int]) -> torch.Tensor:
    """Which of a token's 3 position rows (temporal, height, width) each of the head's half rotary
    frequencies reads, as transformers' Qwen3VLTextRotaryEmbedding.recomposition_frequencies lays them."""
    rows = torch.zeros(sum(section), dtype=torch.long)
    for row in (1, 2):
        rows[row: 3 * section[row]: 3] = row
    return rows


def checkpoint_tensor(name: str, tensor: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """A Qwen3-VL-MoE checkpoint's stacked experts in the engine's [experts, out, in] layout, transposed where the
    hidden size is not where that layout has it (transformers' `Transpose(check_dims=True)` for `qwen3_vl_moe`:
    the releases store [experts, in, out], transformers' own save_pretrained the model's layout); any other as it
    is."""
    if not name.startswith(("model.language_model.", "language_model.")) or not name.endswith(_TRANSPOSED_EXPERTS):
        return tensor
    hidden_axis = 2 if name.endswith("gate_up_proj") else 1
    return tensor if tensor.shape[hidden_axis] == hidden_size else tensor.transpose(1, 2)


@contextmanager
def deepstack_hooks(layers: Sequence[nn.Module], rows: torch.Tensor, deepstack: torch.Tensor) -> Iterator[None]:
    """While it lasts, layer k's output has deepstack[:, k] added at `rows` (Qwen3VLTextModel._deepstack_process).
    deepstack: [R, k, hidden]."""
    def add(level: int):  # noqa: ANN202 - a forward hook
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output.index_add(0, rows, deepstack[:, level].to(output.dtype))
        return hook

    # transformers adds only as many as the model has layers
    handles = [layers[k].register_forward_hook(add(k)) for k in range(min(deepstack.shape[1], len(layers)))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
