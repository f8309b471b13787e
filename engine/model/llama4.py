"""Llama 4's decoder (config: engine/model/llama4_config.py) on the engine's Llama parts: its attention is
engine/model/llama.py's with iRoPE's switches, its MoE engine/model/moe.py's experts under Llama 4's routing.

- Attention: q/k de-interleaved (Llama 4's complex RoPE pairs, turned by the half-split RoPE as GLM-4's), RoPE,
  then each head's q and k L2-normalised (a weightless RMSNorm, after RoPE as transformers), on RoPE layers; on NoPE
  layers no RoPE and the queries scaled by their position's temperature. The chunked layers attend through the
  step's sliding plan, built with the chunk (engine/model/attention.py): each query sees its own chunk only.
- MoE: sigmoid of the top-k router logits scales each token's *input* to its expert (transformers' Llama4TextMoe),
  summed with the shared expert's output. The checkpoint stacks experts as [experts, in, out]; `Llama4Experts` keeps
  that layout, so tensors load as they are.

Tensor parallelism is refused (one process serves it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import AttentionPlan, paged_attention, write_kv
from engine.model.config import ModelConfig
from engine.model.layers import RMSNorm
from engine.model.llama import MLP, Attention, CausalLM, _deinterleaved_rotary
from engine.model.moe import Experts, grouped_mm_supported
from engine.model.parallel import SINGLE, TPGroup
from engine.model.rope import RotaryEmbedding


class Llama4Attention(Attention):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__(config, index)
        assert config.llama4 is not None
        self.qk_l2_norm = config.llama4.qk_l2_norm and self.rotary
        self.eps = config.rms_norm_eps
        self.temperature = None if self.rotary else config.llama4.temperature

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding, kv_cache: torch.Tensor,
                plan: AttentionPlan) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj.split(self.qkv_proj(x))
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.rotary:  # in float32 on a float32 table, as transformers' complex product, then the model's dtype
            dtype = q.dtype
            q, k = rope(positions, _deinterleaved_rotary(q, self.head_dim).float(), _deinterleaved_rotary(k, self.head_dim).float())
            q, k = q.to(dtype), k.to(dtype)
        if self.qk_l2_norm:
            q, k = self._l2(q), self._l2(k)
        if self.temperature is not None:
            floor_scale, attn_scale = self.temperature
            scales = torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * attn_scale + 1.0
            q = (q * scales[:, None, None]).to(q.dtype)
        write_kv(kv_cache, k, v, plan.slot_mapping, plan.kv_format, self.kv_scales)
        if self.sliding:  # a chunked layer: its plan masks each query to its chunk
            assert plan.sliding is not None, "a chunked layer needs the step's sliding plan"
            plan = plan.sliding
        out = paged_attention(q, kv_cache, plan, self.kv_scales)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))

    def _l2(self, x: torch.Tensor) -> torch.Tensor:
        """transformers' Llama4TextL2Norm: RMS-normalised in float32, no weight."""
        wide = x.float()
        return (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Llama4Experts(Experts):
    """The checkpoint's layout: gate_up [experts, hidden, 2 x inter] (gate, then up), down [experts, inter, hidden]."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__(num_experts, hidden_size, intermediate_size)
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden_size, 2 * intermediate_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))

    def grouped(self, x: torch.Tensor, offsets: torch.Tensor, row_experts: torch.Tensor) -> torch.Tensor:
        gate_up = F.grouped_mm(x, self.gate_up_proj, offs=offsets)
        return F.grouped_mm(self.act(*gate_up.chunk(2, dim=-1)), self.down_proj, offs=offsets)

    def expert_weights(self, expert: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gate_up_proj[expert].t(), self.down_proj[expert].t()


class Llama4MoE(nn.Module):
    """Checkpoint names: `router`, `experts`, `shared_expert`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Llama4Experts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        self.shared_expert = MLP(config, SINGLE, config.shared_expert_intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, experts = self.router(x).topk(self.top_k, dim=-1)
        scores = torch.sigmoid(top.float()).to(x.dtype)
        flat_experts = experts.flatten()
        order = flat_experts.argsort(stable=True)  # pairs by expert, tokens in order within one
        tokens = order // self.top_k
        routed_in = x[tokens] * scores.flatten()[order].unsqueeze(-1)  # the score scales the expert's input
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        if grouped_mm_supported(x.device, x.dtype):
            out = self.experts.grouped(routed_in, counts.cumsum(0, dtype=torch.int32), flat_experts[order])
        else:
            out = self.experts.looped(routed_in, counts.tolist())
        return self.shared_expert(x) + torch.zeros_like(x).index_add_(0, tokens, out)


class Llama4DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        self.self_attn = Llama4Attention(config, index)
        self.mlp: MLP | Llama4MoE = Llama4MoE(config) if config.is_sparse(index) else MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding, kv_cache: torch.Tensor,
                plan: AttentionPlan) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), positions, rope, kv_cache, plan)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Llama4CausalLM(CausalLM):
    def __init__(self, config: ModelConfig, tp: TPGroup = SINGLE) -> None:
        if tp.size > 1:
            raise ValueError("Llama 4 is served by one process: tensor parallelism is not supported for it")
        super().__init__(config, tp)
        self.model.layers = nn.ModuleList(Llama4DecoderLayer(config, i) for i in range(config.num_layers))

    def setup_rope(self, device: torch.device, dtype: torch.dtype) -> None:
        """A float32 table whatever the model's dtype: Llama 4 turns q and k in float32."""
        self.rope = RotaryEmbedding(self.config, device, torch.float32)

    @staticmethod
    def checkpoint_name(name: str) -> str:
        """The checkpoint's `feed_forward` is the engine's `mlp`; a multimodal folder's language model, a text one's."""
        from engine.model.loader import _our_name

        return _our_name(name).replace(".feed_forward.", ".mlp.")
