"""The Llama-family decoder on a flattened varlen batch: Llama, Mistral, Qwen2, Qwen3 (per-head
q/k norms), Phi-3 and Gemma 3 (engine/model/families.py: norms around each block's output too, scaled
embeddings, GELU, a RoPE of their own in sliding layers), Gemma 2, GLM-4, GLM-4.5 and OLMo 2
(engine/model/added_families.py: soft-capped attention scores, interleaved rotary pairs, norms after each block only,
q/k norms over the whole projection), full or sliding-window attention per layer, or DeepSeek's
multi-head latent attention (`engine.model.mla`), with a dense MLP or, in the layers a mixture-of-experts model makes
sparse, experts (`engine.model.moe`, DeepSeek's with shared experts). Module and parameter names follow the HF checkpoint layout
(`model.layers.N.self_attn...`), except that q/k/v and gate/up are packed into one projection each
and experts are stacked; the loader maps checkpoint tensors into them."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import AttentionPlan, paged_attention, write_kv
from engine.model.config import ModelConfig
from engine.model.layers import PackedLinear, RMSNorm, TokenEmbedding
from engine.model.mla import MLAttention, deinterleaved
from engine.model.moe import SparseMoE
from engine.model.parallel import SINGLE, TPGroup
from engine.model.rope import RotaryEmbedding

_CPU_GEMM_MIN_ROWS = 4  # see compute_logits


class Attention(nn.Module):
    """`config` is this rank's share under tensor parallelism (engine/model/parallel.py): its heads."""

    def __init__(self, config: ModelConfig, index: int, tp: TPGroup = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.sliding = index in config.sliding_layers
        self.rotary = index not in config.nope_layers  # SmolLM3's NoPE layers attend without positions
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = PackedLinear(config.hidden_size, [q_size, kv_size, kv_size], bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.o_bias)
        # Qwen3: each head's query and key are RMS-normalised (over head_dim) before RoPE; OLMo 2: over all heads.
        self.qk_norm_whole = config.qk_norm_whole
        if self.qk_norm_whole and tp.size > 1:
            raise ValueError(f"{config.model_type} norms q and k over every head at once: tensor parallelism "
                             "(a rank holding some heads) is not supported")
        q_width, k_width = (q_size, kv_size) if self.qk_norm_whole else (config.head_dim, config.head_dim)
        norm = partial(RMSNorm, eps=config.rms_norm_eps, unit_offset=config.norm_unit_offset)
        self.q_norm = norm(q_width) if config.qk_norm else None
        self.k_norm = norm(k_width) if config.qk_norm else None
        self.softmax_scale = config.attention_scale
        self.softcap = config.attn_logit_softcapping  # Gemma 2's
        # GLM-4: its rotary dims are interleaved pairs, turned by the half-split RoPE once de-interleaved.
        self.interleaved_rotary_dim = config.rotary_dim if config.rope_interleave else 0
        # gpt-oss: a learned logit per head in each softmax's denominator (engine/model/attention.py).
        self.sinks = nn.Parameter(torch.empty(config.num_heads)) if config.attention_sinks else None
        # An fp8 KV cache's (k, v) scales (engine/model/kv_quant.py): an fp8 checkpoint's, else 1.0.
        self.kv_scales = (1.0, 1.0)
        self.kv_scales_measured = False  # with calculate_kv_scales: set on the first step

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: torch.Tensor,
        plan: AttentionPlan,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj.split(self.qkv_proj(x))
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None and self.qk_norm_whole:
            q, k = self.q_norm(q.flatten(1)).view_as(q), self.k_norm(k.flatten(1)).view_as(k)
        elif self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.interleaved_rotary_dim:
            q, k = _deinterleaved_rotary(q, self.interleaved_rotary_dim), _deinterleaved_rotary(k, self.interleaved_rotary_dim)
        if self.rotary:
            q, k = rope(positions, q, k)
        # All of the step's K/V goes in before anyone attends, so a sequence can read blocks that
        # another sequence (or an earlier chunk) wrote in this same step.
        if plan.kv_format is not None and plan.kv_format.calibrate and not self.kv_scales_measured:
            self.kv_scales, self.kv_scales_measured = plan.kv_format.measured_scales(k, v), True
        write_kv(kv_cache, k, v, plan.slot_mapping, plan.kv_format, self.kv_scales)
        if self.sliding:
            assert plan.sliding is not None, "a sliding-window layer needs the step's sliding plan"
            plan = plan.sliding
        out = paged_attention(q, kv_cache, plan, self.kv_scales, self.softmax_scale, self.sinks, self.softcap)
        return self.tp.all_reduce(self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim)))


def _deinterleaved_rotary(x: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """The first `rotary_dim` dims of each head de-interleaved (engine/model/mla.py's), the rest as they are."""
    return torch.cat([deinterleaved(x[..., :rotary_dim]), x[..., rotary_dim:]], dim=-1)


class MLP(nn.Module):
    """`intermediate_size`: a width other than the config's (DeepSeek's shared experts)."""

    def __init__(self, config: ModelConfig, tp: TPGroup = SINGLE, intermediate_size: int | None = None) -> None:
        super().__init__()
        self.tp = tp
        size = intermediate_size or config.intermediate_size
        self.gate_up_proj = PackedLinear(config.hidden_size, [size, size], bias=config.mlp_bias)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=config.mlp_bias)
        self.act = F.silu if config.hidden_act == "silu" else partial(F.gelu, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj.split(self.gate_up_proj(x))
        return self.tp.all_reduce(self.down_proj(self.act(gate) * up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int, tp: TPGroup = SINGLE) -> None:
        super().__init__()
        self.self_attn = MLAttention(config) if config.mla else Attention(config, index, tp)
        self.mlp: MLP | SparseMoE = MLP(config, tp)
        if config.is_sparse(index):
            shared_size = config.shared_expert_intermediate_size
            self.mlp = SparseMoE(config, tp, MLP(config, tp, shared_size) if shared_size else None)
        norm = partial(RMSNorm, config.hidden_size, config.rms_norm_eps, config.norm_unit_offset, config.layer_norm)
        # OLMo 2 norms no block's input (`pre_norms` off), only its output.
        self.input_layernorm = norm() if config.pre_norms else None
        # Cohere2: the attention and the MLP both read the input's one norm, their outputs added side by side.
        self.post_attention_layernorm = None if config.parallel_block else norm()
        # Gemma 3 norms each block's output before the residual add, and the MLP's input with a norm of its own.
        self.pre_feedforward_layernorm = norm() if config.sandwich_norms and config.pre_norms else None
        self.post_feedforward_layernorm = norm() if config.sandwich_norms else None

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: torch.Tensor,
        plan: AttentionPlan,
    ) -> torch.Tensor:
        normed = hidden if self.input_layernorm is None else self.input_layernorm(hidden)
        attended = self.self_attn(normed, positions, rope, kv_cache, plan)
        if self.post_attention_layernorm is None:
            return hidden + attended + self.mlp(normed)
        if self.post_feedforward_layernorm is None:  # Llama's pre-norms: the second is the MLP's input's
            hidden = hidden + attended
            return hidden + self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + self.post_attention_layernorm(attended)
        mlp_input = hidden if self.pre_feedforward_layernorm is None else self.pre_feedforward_layernorm(hidden)
        return hidden + self.post_feedforward_layernorm(self.mlp(mlp_input))


class DecoderStack(nn.Module):
    """HF's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig, tp: TPGroup = SINGLE) -> None:
        super().__init__()
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, tp) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_unit_offset, config.layer_norm)


class CausalLM(nn.Module):
    """forward(input_ids [T], positions [T], kv_cache [layers, 2, blocks, block_size, kv_heads, head_dim],
    plan, logits_index [S]) -> float32 logits [S, vocab] for the selected batch tokens only. Under tensor
    parallelism `config` is this rank's share (engine/model/parallel.py) and hidden states are whole on
    every rank after each layer's all-reduces."""

    def __init__(self, config: ModelConfig, tp: TPGroup = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.tp = tp
        self.model = DecoderStack(config, tp)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Not module buffers: they are rebuilt on the real device after meta-device construction.
        self.rope: RotaryEmbedding | None = None
        self.local_rope: RotaryEmbedding | None = None  # Gemma 3's sliding layers'

    def setup_rope(self, device: torch.device, dtype: torch.dtype) -> None:
        self.rope = RotaryEmbedding(self.config, device, dtype)
        if self.config.local_rope_theta is not None:
            self.local_rope = RotaryEmbedding(self.config, device, dtype, local=True)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        plan: AttentionPlan,
        logits_index: torch.Tensor,
    ) -> torch.Tensor:
        return self.compute_logits(self.hidden_states(input_ids, positions, kv_cache, plan)[logits_index])

    def hidden_states(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor | list[torch.Tensor],
        plan: AttentionPlan,
    ) -> torch.Tensor:
        """The last layer's output for every batch token [T, hidden], before the final norm. `kv_cache`: each
        layer's [2, blocks, block_size, kv_heads, head_dim] (a layer's slot, with KV groups)."""
        assert self.rope is not None, "call setup_rope() first"
        hidden = self.model.embed_tokens(input_ids)
        if self.config.embed_scale != 1.0:  # Gemma: rounded to the model's dtype first, as transformers does
            hidden = hidden * torch.tensor(self.config.embed_scale).to(hidden.dtype)
        plans = plan.layers or [plan] * len(self.model.layers)  # with KV groups, each layer's group's
        for layer, layer_cache, layer_plan in zip(self.model.layers, kv_cache, plans, strict=True):
            local = self.local_rope is not None and layer.self_attn.sliding
            hidden = layer(hidden, positions, self.local_rope if local else self.rope, layer_cache, layer_plan)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of some tokens' hidden states: only tokens that sample (or are scored) need
        the final norm and the vocab-sized head."""
        rows = hidden.shape[0]
        if hidden.device.type == "cpu" and 1 < rows < _CPU_GEMM_MIN_ROWS:
            # CPU BLAS multiplies 2 or 3 rows by the head slower than 4 (`head_rows` in
            # bench/results/spec_decode.json); a decode step checking drafts is that shape.
            padding = hidden.new_zeros(_CPU_GEMM_MIN_ROWS - rows, hidden.shape[1])
            return self._softcapped(self.lm_head(self.model.norm(torch.cat([hidden, padding])))[:rows].float())
        return self._softcapped(self.lm_head(self.model.norm(hidden)).float())

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """SamplingParams.embed's vectors of some tokens' hidden states: last-token pooling's final norm,
        L2-normalised (a classifier's are its label logits: engine/model/classifier.py)."""
        return F.normalize(self.model.norm(hidden).float(), dim=-1)

    def _softcapped(self, logits: torch.Tensor) -> torch.Tensor:
        """Times Cohere2's `logit_scale` (a power of two in its configs: exact in any dtype), then Gemma's cap."""
        if self.config.logit_scale != 1.0:
            logits = logits * self.config.logit_scale
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
