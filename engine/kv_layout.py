"""How the torch runner lays out its KV cache: a slot a layer, or with KV groups (engine/kv_groups.py) a slot
that one layer of every group shares, and so the bytes a block takes."""

from __future__ import annotations

import numpy as np
import torch

from engine.kv_groups import KVGroupLayout, kv_group_layout
from engine.model.config import ModelConfig
from engine.model.kv_quant import fp8_format


def runner_kv_groups(config: ModelConfig, enabled: bool, tensor_parallel_size: int) -> KVGroupLayout | None:
    """KV groups where the model mixes sliding and full layers, unless `enabled` is off (--no-hybrid-kv-cache)
    or the model is sharded over ranks (tensor parallel). A host or disk tier behind the cache then keeps a
    group's block a slot (engine/group_tiers.py)."""
    if not enabled or tensor_parallel_size > 1:
        return None
    return kv_group_layout(config.num_layers, config.sliding_layers, config.sliding_window)


def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype, kv_cache_dtype: str = "auto",
                       layers: int | None = None) -> int:
    """Bytes one KV block takes over `layers` slots (None: all the model's layers), K and V (or MLA's one
    latent: ModelConfig.kv_cache_entry): one an element in fp8, else `dtype`'s; with a tensor-parallel rank's
    `config`, that rank's part."""
    element = 1 if fp8_format(kv_cache_dtype) is not None else dtype.itemsize
    planes, heads, values = config.kv_cache_entry
    return planes * (layers or config.num_kv_layers) * block_size * heads * values * element


def step_tables(tables: list[list[list[int]]], seq_of_token: torch.Tensor, positions: torch.Tensor,
                block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every KV group's slot mapping [G, T] and block tables [G, B, blocks] (0-padded) for a step, from each
    sequence's tables (one a group, covering its context) and each batch token's sequence and position."""
    width, num_groups = max(len(seq_tables[0]) for seq_tables in tables), len(tables[0])
    flat: list[int] = []
    for group in range(num_groups):
        for seq_tables in tables:
            flat += seq_tables[group]
            flat += [0] * (width - len(seq_tables[group]))
    # Through numpy: torch.tensor reads a list of Python ints several times slower (0.8 ms for 3,000 of them).
    block_tables = torch.from_numpy(np.array(flat, dtype=np.int64)).view(num_groups, len(tables), width)
    # slot = block_table[pos // block_size] * block_size + pos % block_size, for all tokens at once.
    return block_tables[:, seq_of_token, positions // block_size] * block_size + positions % block_size, block_tables
