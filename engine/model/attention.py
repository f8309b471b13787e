"""Paged attention over a flattened varlen batch.

Every layer first scatters the step's K/V into the paged cache (slot = block * block_size + offset),
then attends: each sequence reads its whole context back through its block table, so it also sees
blocks written earlier in the same step (prefix reuse, chunked prefill).

The attention itself is torch's scaled_dot_product_attention on K/V gathered block by block; the same
code runs on CPU and CUDA (where SDPA picks a flash / memory-efficient kernel). Single-query rows
(decodes, or a 1-token prefill chunk) are padded into one batched call with a key-length mask;
multi-token rows run one call each with a causal mask shifted by the tokens already in the cache.
`AttentionPlan` holds everything derived from the batch, built once per step and shared by all layers.

Sliding-window layers (Mistral, Qwen with `use_sliding_window`) have a plan of their own: a query at
position p sees keys p - window + 1 .. p, so each row gathers only the blocks that window touches and
masks the rest. With KV groups (engine/kv_groups.py: a model mixing sliding and full layers), every group
has its own block tables and slot mapping, so its own plan, and each layer attends through its group's.

With an fp8 cache (engine/model/kv_quant.py) K/V are rounded to one byte as they are written and
widened again as they are gathered, each layer with its own scales; attention itself runs unchanged.

Gemma 3's images attend bidirectionally: a prefill row's mask also lets each image's tokens see the later
tokens of the same image (`AttentionMetadata.image_spans`), on sliding and full layers alike.

gpt-oss's attention sinks (one learned logit per head that joins the softmax's denominator and attends to
nothing) go through SDPA as one more key: a zero key and value whose additive mask is the head's sink, so its
score is exactly the sink (transformers' eager GptOss attention concatenates the sink to the scaled scores).

Gemma 2's attention-logit soft-capping (scores -> cap x tanh(scores / cap) before the mask) is not something SDPA
does: a softcapped layer attends by explicit matmuls and a float32 softmax (transformers' eager attention), on
decode and prefill rows alike.
"""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.model.kv_quant import FP8KVFormat

# At most this many soft-capped scores a prefill row holds at once (64M: 256 MB in float32).
SOFTCAP_SCORES = 1 << 26


@dataclass
class AttentionMetadata:
    """Per-step description of the batch, as the runner builds it (index tensors on the device)."""

    slot_mapping: torch.Tensor  # [T] cache slot of every batch token
    block_tables: torch.Tensor  # [B, max_blocks] each sequence's blocks covering its context, 0-padded
    query_starts: list[int]  # offset of each sequence's first token in the flattened batch
    query_lens: list[int]  # tokens each sequence computes this step
    context_lens: list[int]  # tokens in each sequence's context after this step
    block_size: int
    # Each sequence's bidirectional images (Gemma 3's) among the positions it computes, as [start, end) runs:
    # their tokens see each other both ways (each whole in the step: the scheduler keeps an image in one chunk).
    image_spans: list[list[tuple[int, int]]] | None = None
    # With KV groups: every group's slot mappings [G, T] and block tables [G, B, max_blocks] (the fields above:
    # the first group's).
    group_tables: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class _PrefillRow:
    start: int
    end: int
    block_table: torch.Tensor  # [blocks covering the keys it attends to]
    num_keys: int  # tokens of those blocks that are keys (the rest is beyond the context)
    mask: torch.Tensor | None  # [q, num_keys] causal (window, images) mask; None when plainly causal


class GatherWorkspace:
    """Buffers the K/V a step gathers are copied into, kept from layer to layer and step to step. On a
    CPU a step's gathered context is megabytes (8 sequences of 2,048 tokens: 8 MiB a layer for K), and
    allocating it anew every layer can cost page faults: such a decode step took about 1.8x its time
    with fresh buffers (bench/spec_decode.py, `verify_cost`). Not on CUDA, whose caching allocator already reuses
    memory (a kept buffer there would hold the largest step's gather for good)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


@dataclass
class AttentionPlan:
    """What `paged_attention` needs, derived once per step from AttentionMetadata."""

    slot_mapping: torch.Tensor
    decode_token_index: torch.Tensor | None  # [D] batch-token index of each single-query row
    decode_block_tables: torch.Tensor | None  # [D, blocks]
    decode_mask: torch.Tensor | None  # [D, 1, 1, blocks * block_size] True where the key is in context
    decode_only: bool  # every row is single-query and rows are in token order: skip the scatter
    prefills: list[_PrefillRow]
    sliding: AttentionPlan | None = None  # the sliding-window layers' plan, where the model has them
    workspace: GatherWorkspace | None = None  # where gathered K/V go (None: fresh tensors)
    kv_format: FP8KVFormat | None = None  # an fp8 cache's format; None: K/V stored as computed
    layers: list[AttentionPlan] | None = None  # with KV groups: each layer's, its group's plan

    @classmethod
    def build(cls, meta: AttentionMetadata, sliding_window: int | None = None,
              workspace: GatherWorkspace | None = None, kv_format: FP8KVFormat | None = None,
              layer_groups: list[tuple[int, bool]] | None = None, chunk: int | None = None) -> AttentionPlan:
        """`layer_groups`: with KV groups, each layer's (group, whether it slides). `chunk`: Llama 4's sliding
        layers see only their query's aligned chunk of that many tokens (within a window of one chunk)."""
        if layer_groups is not None:
            return cls._build_groups(meta, sliding_window, workspace, kv_format, layer_groups, chunk)
        plan = cls._build(meta, None)
        plan.workspace, plan.kv_format = workspace, kv_format
        if sliding_window is not None:
            plan.sliding = cls._build(meta, sliding_window, chunk=chunk)
            plan.sliding.workspace, plan.sliding.kv_format = workspace, kv_format
        return plan

    @classmethod
    def _build_groups(cls, meta: AttentionMetadata, sliding_window: int | None, workspace: GatherWorkspace | None,
                      kv_format: FP8KVFormat | None, layer_groups: list[tuple[int, bool]],
                      chunk: int | None = None) -> AttentionPlan:
        """One plan a group, over its tables; a sliding group's is its own sliding plan (its tables have
        NULL_BLOCK before the window, which only a sliding plan never reads). The groups of a kind share
        their rows, windows and masks: one plan over their stacked tables, then a view a group."""
        assert meta.group_tables is not None
        all_slots, all_tables = meta.group_tables
        slides = dict(layer_groups)
        plans: dict[int, AttentionPlan] = {}
        for kind in (False, True):
            groups = sorted(g for g, s in slides.items() if s is kind)
            window, kind_chunk = (sliding_window, chunk) if kind else (None, None)
            if len(groups) == 1:
                plans[groups[0]] = cls._build(meta, window, (all_slots[groups[0]], all_tables[groups[0]]), kind_chunk)
            elif groups:
                index = torch.tensor(groups, device=all_tables.device)
                stacked = cls._build(meta, window, (all_slots[index], all_tables[index]), kind_chunk)
                plans |= {group: stacked.group(k) for k, group in enumerate(groups)}
            for group in groups:
                plans[group].workspace, plans[group].kv_format = workspace, kv_format
                if kind:
                    plans[group].sliding = plans[group]
        first = copy(plans[0])  # (not dataclasses.replace: a step's plans are built in its critical path)
        first.layers = [plans[group] for group, _ in layer_groups]
        return first

    def group(self, k: int) -> AttentionPlan:
        """Group `k`'s plan out of one built over several groups' stacked tables ([G, ...] slot mappings and
        tables)."""
        plan = copy(self)
        plan.slot_mapping = self.slot_mapping[k]
        plan.decode_block_tables = None if self.decode_block_tables is None else self.decode_block_tables[k]
        plan.prefills = [_PrefillRow(r.start, r.end, r.block_table[k], r.num_keys, r.mask) for r in self.prefills]
        return plan

    @classmethod
    def _build(cls, meta: AttentionMetadata, window: int | None,
               tables: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int | None = None) -> AttentionPlan:
        """`tables`: (slot mapping, block tables) in place of `meta`'s: a group's, or several groups' stacked.
        `chunk` (with `window`): keys before the query's aligned chunk masked too."""
        slot_mapping, block_tables = tables or (meta.slot_mapping, meta.block_tables)
        device = slot_mapping.device
        block_size = meta.block_size
        single = [i for i, n in enumerate(meta.query_lens) if n == 1]
        decode_index = decode_tables = decode_mask = None
        if single:
            rows = torch.tensor(single, device=device)
            lens = torch.tensor([meta.context_lens[i] for i in single], device=device)
            if window is None:
                num_blocks = -(-max(meta.context_lens[i] for i in single) // block_size)
                decode_tables = block_tables[..., rows, :num_blocks]  # [..., D, blocks]: tables of groups too
                key_pos = torch.arange(num_blocks * block_size, device=device)[None, :]
                decode_mask = key_pos < lens[:, None]
            else:  # each row's table starts at the block holding its window's first key
                firsts = [max(0, meta.context_lens[i] - window) // block_size for i in single]
                num_blocks = max(-(-meta.context_lens[i] // block_size) - f for i, f in zip(single, firsts, strict=True))
                first = torch.tensor(firsts, device=device)
                columns = (first[:, None] + torch.arange(num_blocks, device=device)).clamp(max=block_tables.shape[-1] - 1)
                row_tables = block_tables[..., rows, :]
                decode_tables = row_tables.gather(-1, columns.expand(*row_tables.shape[:-1], num_blocks))
                key_pos = first[:, None] * block_size + torch.arange(num_blocks * block_size, device=device)
                decode_mask = (key_pos < lens[:, None]) & (key_pos >= lens[:, None] - window)
                if chunk is not None:  # the query at lens - 1 sees its chunk's keys
                    decode_mask &= key_pos >= (lens[:, None] - 1) // chunk * chunk
            decode_mask = decode_mask[:, None, None, :]
            decode_index = torch.tensor([meta.query_starts[i] for i in single], device=device)
        prefills = []
        for i, n in enumerate(meta.query_lens):
            if n == 1:
                continue
            context = meta.context_lens[i]
            cached = context - n
            first_block = 0 if window is None else max(0, cached - window + 1) // block_size
            first_key = first_block * block_size
            mask = None
            spans = meta.image_spans[i] if meta.image_spans is not None else ()
            if cached or window is not None or spans:
                key_pos = torch.arange(first_key, context, device=device)[None, :]
                query_pos = torch.arange(cached, context, device=device)[:, None]
                mask = key_pos <= query_pos
                for s, e in spans:  # causal OR within the image, then the window, as transformers' Gemma 3 masks
                    mask |= (query_pos >= s) & (query_pos < e) & (key_pos >= s) & (key_pos < e)
                if window is not None:
                    mask &= key_pos > query_pos - window
                if chunk is not None:
                    mask &= key_pos >= query_pos // chunk * chunk
            start = meta.query_starts[i]
            table = block_tables[..., i, first_block : -(-context // block_size)]
            prefills.append(_PrefillRow(start, start + n, table, context - first_key, mask))
        return cls(
            slot_mapping=slot_mapping,
            decode_token_index=decode_index,
            decode_block_tables=decode_tables,
            decode_mask=decode_mask,
            decode_only=not prefills,
            prefills=prefills,
        )


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor,
             kv_format: FP8KVFormat | None = None, scales: tuple[float, float] = (1.0, 1.0)) -> None:
    """kv_cache: one layer's [2, num_blocks, block_size, kv_heads, head_dim]; k, v: [T, kv_heads, head_dim].
    With `kv_format`, they are stored as its fp8 bytes, divided by the layer's (k, v) `scales`."""
    kv_heads, head_dim = k.shape[-2:]
    if kv_format is not None:
        k, v = kv_format.quantize(k, scales[0]), kv_format.quantize(v, scales[1])
    kv_cache[0].view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


@dataclass(frozen=True)
class _Reader:
    """How one layer's attention reads K/V back: into the workspace, widened from fp8 with its scales."""

    workspace: GatherWorkspace | None
    kv_format: FP8KVFormat | None
    scales: tuple[float, float]
    softmax_scale: float | None = None
    sinks: torch.Tensor | None = None  # [heads]: gpt-oss's
    softcap: float | None = None  # Gemma 2's attention-logit cap

    def gather(self, cache: torch.Tensor, block_tables: torch.Tensor, which: int) -> torch.Tensor:
        """[..., blocks] table -> [..., kv_heads, blocks * block_size, head_dim] keys (0) or values (1)."""
        # index_select, not advanced indexing: several times faster on CPU for the same copy.
        index = block_tables.reshape(-1)
        shape = (len(index), *cache.shape[1:])
        name = "kv"[which]
        if self.workspace is None:
            blocks = cache.index_select(0, index)
        else:
            blocks = torch.index_select(cache, 0, index, out=self.workspace.take(name, shape, cache.dtype, cache.device))
        if self.kv_format is not None:
            wide = None if self.workspace is None else \
                self.workspace.take(name + "_wide", shape, self.kv_format.dtype, cache.device)
            blocks = self.kv_format.dequantize(blocks, self.scales[which], out=wide)
        merged = blocks.view(*block_tables.shape, *cache.shape[1:]).flatten(-4, -3)  # [..., tokens, kv_heads, head_dim]
        return merged.transpose(-3, -2)


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, plan: AttentionPlan,
                    scales: tuple[float, float] = (1.0, 1.0), softmax_scale: float | None = None,
                    sinks: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """q: [T, heads, head_dim] (rotated); returns [T, heads, head_dim]. K/V must already be written
    (with an fp8 plan, by `write_kv` with the same `scales`). `softmax_scale`: the scores' factor, None for
    head_dim ** -0.5 (Gemma 3 has its own). `sinks`: [heads] gpt-oss's sink logits. `softcap`: Gemma 2's cap on
    the scaled scores."""
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    reader = _Reader(plan.workspace, plan.kv_format, scales, softmax_scale, sinks, softcap)
    if plan.decode_only:
        return _decode_attention(q, k_cache, v_cache, plan, reader)
    out = torch.empty_like(q)
    if plan.decode_token_index is not None:
        out[plan.decode_token_index] = _decode_attention(q[plan.decode_token_index], k_cache, v_cache, plan, reader)
    for row in plan.prefills:
        out[row.start : row.end] = _prefill_attention(q[row.start : row.end], k_cache, v_cache, row, reader)
    return out


def _decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionPlan, reader: _Reader
) -> torch.Tensor:
    rows, heads, head_dim = q.shape
    k = reader.gather(k_cache, plan.decode_block_tables, 0)  # [D, kv_heads, L, head_dim]
    v = reader.gather(v_cache, plan.decode_block_tables, 1)
    kv_heads = k.shape[1]
    # GQA without repeating K/V: the query heads sharing a KV head become that head's query rows.
    grouped = q.view(rows, kv_heads, heads // kv_heads, head_dim)
    mask = plan.decode_mask
    if reader.sinks is not None:  # query head h is (h // group, h % group) here
        k, v, mask = _with_sink(k, v, mask, reader.sinks.view(1, kv_heads, heads // kv_heads, 1), q.dtype)
    if reader.softcap is not None:
        out = _softcapped(grouped, k, v, mask, reader)
    else:
        out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=reader.softmax_scale)
    return out.reshape(rows, heads, head_dim)


def _prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, row: _PrefillRow, reader: _Reader
) -> torch.Tensor:
    k = reader.gather(k_cache, row.block_table, 0)[:, : row.num_keys].unsqueeze(0)  # [1, kv_heads, keys, head_dim]
    v = reader.gather(v_cache, row.block_table, 1)[:, : row.num_keys].unsqueeze(0)
    mask = row.mask
    if reader.sinks is not None:
        if mask is None:
            mask = torch.ones(q.shape[0], row.num_keys, dtype=torch.bool, device=q.device).tril()
        k, v, mask = _with_sink(k, v, mask, reader.sinks.view(1, -1, 1, 1), q.dtype)
    if reader.softcap is not None:  # query head h is (h // group, h % group) of [kv_heads, group]
        if mask is None:
            mask = torch.ones(q.shape[0], row.num_keys, dtype=torch.bool, device=q.device).tril()
        grouped = q.transpose(0, 1).unflatten(0, (k.shape[1], -1))  # [kv_heads, group, q, head_dim]
        # The scores are materialised: a long prompt's queries go a slice at a time, their memory bounded.
        step = max(1, SOFTCAP_SCORES // (q.shape[1] * row.num_keys))
        out = torch.cat([_softcapped(grouped[..., s : s + step, :], k[0, :, None], v[0, :, None], mask[s : s + step],
                                     reader) for s in range(0, q.shape[0], step)], dim=-2)
        return out.flatten(0, 1).transpose(0, 1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k,
        v,
        attn_mask=mask,
        is_causal=mask is None,
        enable_gqa=True,
        scale=reader.softmax_scale,
    )
    return out.squeeze(0).transpose(0, 1)


def _softcapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                reader: _Reader) -> torch.Tensor:
    """SDPA with the scaled scores soft-capped (cap x tanh(s / cap)) before the boolean `mask` and a float32
    softmax, as transformers' eager Gemma 2 attention; q [..., q, head_dim], k/v [..., keys, head_dim]."""
    assert reader.softcap is not None
    scale = reader.softmax_scale if reader.softmax_scale is not None else q.shape[-1] ** -0.5
    scores = torch.tanh(q @ k.transpose(-1, -2) * scale / reader.softcap) * reader.softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def _with_sink(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, sinks: torch.Tensor,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K/V [B, kv_heads, L, head_dim] with a zero key and value appended, and the boolean `mask` [..., L]
    as an additive one [..., L + 1] whose last column is each head's sink (`sinks` broadcast to the scores'
    [B, heads-as-laid-out, queries, 1])."""
    zeros = k.new_zeros(*k.shape[:-2], 1, k.shape[-1])
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    shape = torch.broadcast_shapes(additive.shape[:-1], sinks.shape[:-1])
    sink_column = sinks.to(dtype).expand(*shape, 1)
    return (torch.cat([k, zeros], dim=-2), torch.cat([v, zeros], dim=-2),
            torch.cat([additive.expand(*shape, additive.shape[-1]), sink_column], dim=-1))
