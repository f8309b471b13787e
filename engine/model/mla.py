"""Multi-head latent attention (DeepSeek-V2/V3, engine/model/deepseek.py) over the paged cache.

Each token's keys and values come from one latent: `kv_a_proj_with_mqa` gives `kv_lora_rank` values (RMS-normed by
`kv_a_layernorm`) and a `qk_rope_head_dim` key shared by every head (rotated); `kv_b_proj` expands the normed part
into each head's `qk_nope_head_dim` key and `v_head_dim` value. The cache keeps the latent (normed part and rotated
key, kv_lora_rank + qk_rope_head_dim values a token a layer: one plane of one "head", ModelConfig.kv_cache_entry),
not the expanded keys and values, as vLLM's MLA backends do. Attention reads the latents back through the step's
AttentionPlan (engine/model/attention.py: the same block tables, masks and gather workspace) and takes one of two
equal forms:

- decompressed: `kv_b_proj` expands the gathered latents into per-head keys and values, then plain attention
  (what long prefill rows do: many queries share one expansion);
- absorbed: the key expansion is folded into the queries (q_nope times W_UK gives a query in latent space), every
  head attends to the latents themselves as one shared key/value head, and W_UV is applied to the output (what
  decode rows do by default, and prefill rows of fewer queries than `absorb_below`, such as a decode checking
  drafts: nothing context-long is expanded, each query pair costs more; bench/mla.py measures both).

The rotary dims are interleaved pairs in DeepSeek's checkpoints (`rope_interleave`, transformers' V2 complex
rotation and V3's `apply_rotary_pos_emb_interleave`): they are de-interleaved (evens, then odds) before the
engine's half-split RoPE, which is the same rotation; queries and keys permuted alike leave every score unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import AttentionPlan, _Reader
from engine.model.config import ModelConfig
from engine.model.layers import RMSNorm
from engine.model.rope import RotaryEmbedding

LATENT_NORM_EPS = 1e-6  # transformers' q_a_layernorm and kv_a_layernorm take their default eps
DECODE_PATHS = ("absorbed", "decompressed")


class MLAttention(nn.Module):
    """Parameter names follow the checkpoints (`self_attn.q_a_proj`, `kv_b_proj`...). `decode_path`: the form
    single-query rows take (DECODE_PATHS)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.rank = config.num_heads, config.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.head_dim, config.v_head_dim
        self.interleaved = config.rope_interleave
        q_size = self.num_heads * (self.nope_dim + self.rope_dim)
        hidden = config.hidden_size
        if config.q_lora_rank:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=config.qkv_bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(config.q_lora_rank, q_size, bias=False)
        else:
            self.q_proj = nn.Linear(hidden, q_size, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.rank + self.rope_dim, bias=config.qkv_bias)
        self.kv_a_layernorm = RMSNorm(self.rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.rank, self.num_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, hidden, bias=config.o_bias)
        self.softmax_scale = config.attention_scale
        self.sliding = False  # (the decoder asks every attention layer)
        self.decode_path = "absorbed"
        # Query rows below which a prefill row absorbs: half the FLOPs' break-even (expanding a row's context costs
        # keys x rank x heads x (nope + v); absorbing adds, a query and key, heads x (2 rank + rope - qk - v)),
        # since absorbed attention over the wide latents runs slower a FLOP (bench/mla.py: on a CPU, V2-Lite's
        # break-even of 170 rows measured about 100; this gives 85).
        qk_dim = self.nope_dim + self.rope_dim
        self.absorb_below = self.rank * (self.nope_dim + self.v_dim) // max(
            1, 2 * self.rank + self.rope_dim - qk_dim - self.v_dim) // 2

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding, kv_cache: torch.Tensor,
                plan: AttentionPlan) -> torch.Tensor:
        """kv_cache: this layer's [1, blocks, block_size, 1, kv_lora_rank + rope dims]."""
        num_tokens = x.shape[0]
        q = self._queries(x).view(num_tokens, self.num_heads, self.nope_dim + self.rope_dim)
        q_nope, q_rot = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope_dim], dim=-1)
        if self.interleaved:
            q_rot, k_rot = deinterleaved(q_rot), deinterleaved(k_rot)
        q_rot, k_rot = rope(positions, q_rot, k_rot.unsqueeze(1))
        entries = torch.cat([self.kv_a_layernorm(latent), k_rot.squeeze(1)], dim=-1)
        # The whole step's latents go in before anyone attends (chunks and prefix hits read this step's blocks).
        kv_cache[0].view(-1, entries.shape[-1]).index_copy_(0, plan.slot_mapping, entries)
        out = self._attend(q_nope, q_rot, kv_cache[0], plan)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.v_dim))

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def _attend(self, q_nope: torch.Tensor, q_rot: torch.Tensor, cache: torch.Tensor,
                plan: AttentionPlan) -> torch.Tensor:
        reader = _Reader(plan.workspace, None, (1.0, 1.0))
        decode = self.absorbed_decode if self.decode_path == "absorbed" else self.decompressed_decode
        if plan.decode_only:
            return decode(q_nope, q_rot, reader.gather(cache, plan.decode_block_tables, 0), plan.decode_mask)
        out = q_nope.new_empty(*q_nope.shape[:-1], self.v_dim)
        rows = plan.decode_token_index
        if rows is not None:
            out[rows] = decode(q_nope[rows], q_rot[rows], reader.gather(cache, plan.decode_block_tables, 0),
                               plan.decode_mask)
        for row in plan.prefills:
            latents = reader.gather(cache, row.block_table, 0)[0, : row.num_keys]  # [keys, latent]
            span = slice(row.start, row.end)
            absorb = self.decode_path == "absorbed" and row.end - row.start < self.absorb_below
            prefill = self.absorbed_prefill if absorb else self.decompressed_prefill
            out[span] = prefill(q_nope[span], q_rot[span], latents, row.mask)
        return out

    def _expand(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents [..., keys, rank + rope] -> keys [..., heads, keys, qk dims], values [..., heads, keys, v dims]."""
        expanded = self.kv_b_proj(latents[..., : self.rank])
        expanded = expanded.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)
        k_nope, values = expanded.split([self.nope_dim, self.v_dim], dim=-1)
        k_rot = latents[..., None, :, self.rank :].expand(*k_nope.shape[:-1], self.rope_dim)
        return torch.cat([k_nope, k_rot], dim=-1), values

    def decompressed_prefill(self, q_nope: torch.Tensor, q_rot: torch.Tensor, latents: torch.Tensor,
                             mask: torch.Tensor | None) -> torch.Tensor:
        """One row's queries [n, heads, ...] over its latents [keys, latent]; `mask` [n, keys] or None (causal)."""
        keys, values = self._expand(latents)
        query = torch.cat([q_nope, q_rot], dim=-1).transpose(0, 1)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=mask is None,
                                             scale=self.softmax_scale)
        return out.transpose(0, 1)

    def absorbed_prefill(self, q_nope: torch.Tensor, q_rot: torch.Tensor, latents: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
        """As `decompressed_prefill`, absorbed: each head's queries attend to the row's latents as one shared head."""
        w_uk, w_uv = self._absorbed_weights()
        query = torch.cat([torch.einsum("thn,hnr->htr", q_nope, w_uk), q_rot.transpose(0, 1)], dim=-1)
        keys = latents[None].expand(self.num_heads, -1, -1)  # a view: every head reads the same latents
        out = F.scaled_dot_product_attention(query, keys, keys[..., : self.rank], attn_mask=mask,
                                             is_causal=mask is None, scale=self.softmax_scale)
        return torch.einsum("htr,hvr->thv", out, w_uv)

    def _absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj's key part W_UK [heads, nope, rank] and value part W_UV [heads, v, rank]."""
        w_uk, w_uv = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.rank).split(
            [self.nope_dim, self.v_dim], dim=1)
        return w_uk, w_uv

    def decompressed_decode(self, q_nope: torch.Tensor, q_rot: torch.Tensor, latents: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
        """Single queries [D, heads, ...] over gathered latents [D, 1, L, latent] masked by `mask` [D, 1, 1, L]."""
        keys, values = self._expand(latents[:, 0])  # [D, heads, L, ...]
        query = torch.cat([q_nope, q_rot], dim=-1)[:, :, None]
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self.softmax_scale)
        return out[:, :, 0]

    def absorbed_decode(self, q_nope: torch.Tensor, q_rot: torch.Tensor, latents: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
        """As `decompressed_decode`, with W_UK folded into the queries and W_UV applied after: every head's query
        row attends to the latents as one shared key (latent and rotary key) and value (the latent)."""
        w_uk, w_uv = self._absorbed_weights()
        q_latent = torch.einsum("dhn,hnr->dhr", q_nope, w_uk)
        query = torch.cat([q_latent, q_rot], dim=-1)[:, None]  # [D, 1 shared head, heads as rows, latent]
        out = F.scaled_dot_product_attention(query, latents, latents[..., : self.rank], attn_mask=mask,
                                             scale=self.softmax_scale)
        return torch.einsum("dhr,hvr->dhv", out[:, 0], w_uv)


def deinterleaved(x: torch.Tensor) -> torch.Tensor:
    """Pairs (x0, x1), (x2, x3)... as (x0, x2, ..., x1, x3, ...): the layout the half-split RoPE turns."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
