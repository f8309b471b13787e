"""Mamba-2 hybrids (Bamba, Granite 4.0-H, Nemotron-H: engine/model/mamba_config.py) on the engine's flattened varlen batch:
each layer a Mamba-2 mixer (engine/model/mamba_mixer.py) over the sequences' state slots or the Llama
family's paged attention (engine/model/llama.py's Attention), then Bamba's gated MLP or Granite's shared MLP
plus its experts (engine/model/moe.py). Only the attention layers have KV slots: `HybridCaches` holds them
and the state pool (engine/mamba_state.py). Module names follow the checkpoints' after `checkpoint_name`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.mamba_state import HybridCaches
from engine.model.attention import AttentionPlan
from engine.model.config import ModelConfig
from engine.model.layers import RMSNorm, TokenEmbedding
from engine.model.llama import MLP, Attention, CausalLM
from engine.model.mamba_config import BAMBA, NEMOTRON_H, HybridSpec
from engine.model.mamba_mixer import Mamba2Mixer
from engine.model.moe import SparseMoE
from engine.model.rope import RotaryEmbedding

# Checkpoint names -> ours: Bamba's MLP and its norms as the Llama layout's, Granite's MoE block (its stacked
# experts and router) as engine/model/moe.py's.
_RENAMES = ((".feed_forward.", ".mlp."), (".pre_ff_layernorm.", ".post_attention_layernorm."),
            ("model.final_layernorm.", "model.norm."), (".block_sparse_moe.router.layer.", ".mlp.gate."),
            (".block_sparse_moe.input_linear.weight", ".mlp.experts.gate_up_proj"),
            (".block_sparse_moe.output_linear.weight", ".mlp.experts.down_proj"),
            ("backbone.embeddings.", "model.embed_tokens."), ("backbone.norm_f.", "model.norm."),
            ("backbone.layers.", "model.layers."))


class NoRope:
    """Granite 4.0-H's attention: no positions at all."""

    def __call__(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


class SharedMLP(nn.Module):
    """Granite's always-on gated MLP: `input_linear` holds gate then up."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.input_linear = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.output_linear = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.input_linear(x).chunk(2, dim=-1)
        return self.output_linear(F.silu(gate) * up)


class HybridLayer(nn.Module):
    def __init__(self, config: ModelConfig, spec: HybridSpec, index: int) -> None:
        super().__init__()
        self.mamba = Mamba2Mixer(spec, config.hidden_size, config.rms_norm_eps) if index in spec.mamba_layers else None
        self.self_attn = None if self.mamba is not None else Attention(config, index)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp: nn.Module | None = MLP(config) if spec.family == BAMBA else None
        self.shared_mlp = None if spec.family == BAMBA else SharedMLP(config.hidden_size, spec.shared_intermediate_size)
        if config.is_sparse(index):
            self.mlp = SparseMoE(config)
        self.residual_multiplier = spec.residual_multiplier

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding | NoRope,
                caches: HybridCaches, plan: AttentionPlan, kv_slot: int, state_slot: int) -> torch.Tensor:
        x = self.input_layernorm(hidden)
        if self.mamba is not None:
            mixed = self.mamba(x, caches.conv[state_slot], caches.ssm[state_slot], caches.step)
        else:
            assert self.self_attn is not None
            mixed = self.self_attn(x, positions, rope, caches.kv[kv_slot], plan)
        hidden = hidden + mixed * self.residual_multiplier
        x = self.post_attention_layernorm(hidden)
        out = self.mlp(x) if self.mlp is not None else 0
        if self.shared_mlp is not None:
            out = out + self.shared_mlp(x)
        return hidden + out * self.residual_multiplier


class SquaredReLUMLP(nn.Module):
    """Nemotron-H's MLP: down(relu(up(x)) ** 2), no gate."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.square(F.relu(self.up_proj(x))))


class NemotronLayer(nn.Module):
    """Nemotron-H's block: hidden + mixer(norm(hidden)), the mixer a Mamba-2 one, attention or an MLP."""

    def __init__(self, config: ModelConfig, spec: HybridSpec, index: int) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer: nn.Module
        if index in spec.mamba_layers:
            self.mixer = Mamba2Mixer(spec, config.hidden_size, config.rms_norm_eps)
        elif index in spec.mlp_layers:
            self.mixer = SquaredReLUMLP(config)
        else:
            self.mixer = Attention(config, index)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding | NoRope,
                caches: HybridCaches, plan: AttentionPlan, kv_slot: int, state_slot: int) -> torch.Tensor:
        x = self.norm(hidden)
        if isinstance(self.mixer, Mamba2Mixer):
            return hidden + self.mixer(x, caches.conv[state_slot], caches.ssm[state_slot], caches.step)
        if isinstance(self.mixer, Attention):
            return hidden + self.mixer(x, positions, rope, caches.kv[kv_slot], plan)
        return hidden + self.mixer(x)


class HybridStack(nn.Module):
    def __init__(self, config: ModelConfig, spec: HybridSpec) -> None:
        super().__init__()
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size)
        layer = NemotronLayer if spec.family == NEMOTRON_H else HybridLayer
        self.layers = nn.ModuleList(layer(config, spec, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class HybridCausalLM(CausalLM):
    """CausalLM's interface (compute_logits, pool, setup_rope) over hybrid layers; `kv_cache` is HybridCaches."""

    def __init__(self, config: ModelConfig) -> None:
        nn.Module.__init__(self)
        assert config.hybrid is not None
        self.config, self.spec = config, config.hybrid
        self.model = HybridStack(config, config.hybrid)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope: RotaryEmbedding | None = None
        self.local_rope = None
        mamba, mlp = set(self.spec.mamba_layers), set(self.spec.mlp_layers)
        # Each layer's place among its kind: the attention layers' KV slots, the mixers' state slots.
        self._slots = [(sum(1 for j in range(i) if j not in mamba | mlp), sum(1 for j in range(i) if j in mamba))
                       for i in range(config.num_layers)]

    @staticmethod
    def checkpoint_name(name: str) -> str:
        for theirs, ours in _RENAMES:
            name = name.replace(theirs, ours)
        return name

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: HybridCaches,  # type: ignore[override]
                      plan: AttentionPlan) -> torch.Tensor:
        assert self.rope is not None, "call setup_rope() first"
        rope = self.rope if self.spec.rope else NoRope()
        hidden = self.model.embed_tokens(input_ids)
        if self.config.embed_scale != 1.0:
            hidden = hidden * self.config.embed_scale
        for layer, (kv_slot, state_slot) in zip(self.model.layers, self._slots, strict=True):
            hidden = layer(hidden, positions, rope, kv_cache, plan, kv_slot, state_slot)
        return hidden

    def _softcapped(self, logits: torch.Tensor) -> torch.Tensor:
        """Granite divides its logits by `logits_scaling`."""
        scaling = self.spec.logits_scaling
        return logits if scaling == 1.0 else logits / scaling
