"""KV cache groups of a model that mixes sliding-window and full-attention layers (gpt-oss: every second layer
slides over 128 tokens; Gemma 3: five of every six over 1,024), vLLM's hybrid KV cache manager's layout.

The layers are split into groups of `group_size` layers of one kind, full groups first (vLLM's
`KVCacheGroupSpec`s; the last group of a kind padded with unused slots where its count is not a multiple).
All groups allocate from one pool of blocks: block b is page b of each of `group_size` slot tensors, and
layer j of every group keeps its KV in slot j. Each group has a block table per request (engine/sequence.py),
so a sliding group releases the blocks that left its window while a full group keeps them
(engine/block_manager.py): a long request holds its context in the full groups and a window in the others."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVGroupLayout:
    window: int  # the sliding layers' window, in tokens
    group_size: int  # layers a group holds: the slots a pool block has a page in
    groups: tuple[tuple[int, ...], ...]  # each group's layers, in slot order: full groups first
    slides: tuple[bool, ...]  # whether each group's layers slide

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def layer_places(self, num_layers: int) -> list[tuple[int, int]]:
        """(group, slot) of each layer, in layer order."""
        places: dict[int, tuple[int, int]] = {}
        for group, layers in enumerate(self.groups):
            for slot, layer in enumerate(layers):
                places[layer] = (group, slot)
        return [places[layer] for layer in range(num_layers)]


def kv_group_layout(num_layers: int, sliding_layers: tuple[int, ...], window: int | None) -> KVGroupLayout | None:
    """The layout of a model with both kinds of layers; None where every layer or none slides (one group)."""
    sliding = [i for i in range(num_layers) if i in sliding_layers]
    full = [i for i in range(num_layers) if i not in sliding_layers]
    if not window or not sliding or not full:
        return None
    size = min(len(sliding), len(full))
    chunks = [(tuple(kind[i : i + size]), slides) for kind, slides in ((full, False), (sliding, True))
              for i in range(0, len(kind), size)]
    return KVGroupLayout(window, size, tuple(layers for layers, _ in chunks), tuple(slides for _, slides in chunks))
