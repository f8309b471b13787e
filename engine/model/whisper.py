"""Whisper (transformers' WhisperForConditionalGeneration), laid out under the checkpoint's own tensor names so
its state dict loads as it is.

The encoder runs once per request on a 30 s window's log-mel features: two convolutions (the second of stride
2, GELU after each), the sinusoidal positions the checkpoint stores, pre-LN transformer layers attending both
ways, a final LayerNorm. Each decoder layer's cross-attention K/V are then projected from its output once
(`cross_kv`) and kept with the request (engine/audio_inputs.py), not in the paged cache: they are the audio's,
not the tokens'. The decoder: token embeddings plus learned positions, pre-LN layers of causal self-attention
in the engine's paged KV cache (engine/model/attention.py), cross-attention on those K/V and a GELU MLP, a final
LayerNorm, logits by the tied token embeddings (`proj_out`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from engine.model.attention import AttentionPlan, paged_attention, write_kv

WHISPER = "whisper"
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


@dataclass(frozen=True)
class WhisperConfig:
    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    num_mel_bins: int
    max_source_positions: int  # encoder positions: a window's frames / 2
    max_target_positions: int  # the decoder's context (448 in every release)
    scale_embedding: bool
    activation: str
    tie_word_embeddings: bool
    torch_dtype: str
    eos_token_ids: tuple[int, ...]
    model_type: str = WHISPER

    @classmethod
    def from_dict(cls, raw: dict) -> WhisperConfig:
        activation = raw.get("activation_function", "gelu")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unsupported Whisper activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        eos = raw.get("eos_token_id", 50257)
        return cls(vocab_size=raw["vocab_size"], d_model=raw["d_model"], encoder_layers=raw["encoder_layers"],
                   decoder_layers=raw["decoder_layers"], encoder_heads=raw["encoder_attention_heads"],
                   decoder_heads=raw["decoder_attention_heads"], encoder_ffn_dim=raw["encoder_ffn_dim"],
                   decoder_ffn_dim=raw["decoder_ffn_dim"], num_mel_bins=raw.get("num_mel_bins", 80),
                   max_source_positions=raw.get("max_source_positions", 1500),
                   max_target_positions=raw.get("max_target_positions", 448),
                   scale_embedding=bool(raw.get("scale_embedding", False)), activation=activation,
                   tie_word_embeddings=raw.get("tie_word_embeddings", True) is not False,
                   torch_dtype=raw.get("torch_dtype") or raw.get("dtype") or "float32",
                   eos_token_ids=(eos,) if isinstance(eos, int) else tuple(eos))

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> WhisperConfig:
        return cls.from_dict(json.loads((Path(model_dir) / "config.json").read_text()))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_heads

    @property
    def num_frames(self) -> int:
        """Log-mel frames a window holds (3,000: 30 s at 100 a second)."""
        return 2 * self.max_source_positions


class Projections(nn.Module):
    """q, k (no bias, as Whisper's), v and out projections of one attention."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_model] -> [..., heads, head_dim]."""
        return x.unflatten(-1, (self.heads, -1))


class FeedForward(nn.Module):
    """The layer's MLP: its fc1 and fc2 sit on the layer itself in the checkpoint, so this is a mixin."""

    fc1: nn.Linear
    fc2: nn.Linear
    final_layer_norm: nn.LayerNorm
    act: str

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(ACTIVATIONS[self.act](self.fc1(self.final_layer_norm(x))))


class EncoderLayer(FeedForward, nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        self.act = c.activation
        self.self_attn = Projections(c.d_model, c.encoder_heads)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.encoder_ffn_dim)
        self.fc2 = nn.Linear(c.encoder_ffn_dim, c.d_model)
        self.final_layer_norm = nn.LayerNorm(c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, S, d_model], every position seeing every other."""
        a = self.self_attn
        h = self.self_attn_layer_norm(x)
        q, k, v = (a.split(p(h)).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        return self.feed_forward(x + a.out_proj(attended))


class Encoder(nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        self.act = c.activation
        self.conv1 = nn.Conv1d(c.num_mel_bins, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(c.max_source_positions, c.d_model)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.layer_norm = nn.LayerNorm(c.d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [B, num_mel_bins, frames] -> [B, frames / 2, d_model]."""
        act = ACTIVATIONS[self.act]
        x = act(self.conv2(act(self.conv1(features)))).transpose(1, 2)
        x = x + self.embed_positions.weight[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


@dataclass
class CrossPlan:
    """Where each sequence's rows of a step are and the cross-attention K/V they read, built once a step.
    Single-query rows (decodes) attend together through K/V stacked along a batch dimension; longer rows
    (prompts) one call each. `decode_kv[layer]`: that layer's stacked (K, V), [D, heads, S, head_dim]."""

    decode_index: torch.Tensor | None  # [D] the decode rows' places in the step
    decode_kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    prefills: list[tuple[int, int, list[tuple[torch.Tensor, torch.Tensor]]]]  # (start, end, each layer's K/V)


class DecoderLayer(FeedForward, nn.Module):
    def __init__(self, c: WhisperConfig, index: int) -> None:
        super().__init__()
        self.index, self.act = index, c.activation
        self.self_attn = Projections(c.d_model, c.decoder_heads)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.encoder_attn = Projections(c.d_model, c.decoder_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.decoder_ffn_dim)
        self.fc2 = nn.Linear(c.decoder_ffn_dim, c.d_model)
        self.final_layer_norm = nn.LayerNorm(c.d_model)

    def cross_kv(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One window's encoder output [S, d_model] -> this layer's cross-attention (K, V), [heads, S, head_dim]."""
        a = self.encoder_attn
        return a.split(a.k_proj(encoded)).transpose(0, 1), a.split(a.v_proj(encoded)).transpose(0, 1)

    def forward(self, x: torch.Tensor, kv_cache: torch.Tensor, plan: AttentionPlan, cross: CrossPlan) -> torch.Tensor:
        """x: the step's rows [T, d_model]; kv_cache: this layer's [2, blocks, block_size, heads, head_dim]."""
        a = self.self_attn
        h = self.self_attn_layer_norm(x)
        q, k, v = (a.split(p(h)) for p in (a.q_proj, a.k_proj, a.v_proj))
        write_kv(kv_cache, k, v, plan.slot_mapping)
        x = x + a.out_proj(paged_attention(q, kv_cache, plan).flatten(-2))
        c = self.encoder_attn
        q = c.split(c.q_proj(self.encoder_attn_layer_norm(x)))  # [T, heads, head_dim]
        out = torch.empty_like(q)
        if cross.decode_index is not None and cross.decode_kv is not None:
            keys, values = cross.decode_kv[self.index]
            out[cross.decode_index] = F.scaled_dot_product_attention(
                q[cross.decode_index].unsqueeze(2), keys, values).squeeze(2)
        for start, end, kv in cross.prefills:
            keys, values = kv[self.index]
            out[start:end] = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), keys, values).transpose(0, 1)
        return self.feed_forward(x + c.out_proj(out.flatten(-2)))


class Decoder(nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        self.embed_scale = c.d_model**0.5 if c.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.embed_positions = nn.Embedding(c.max_target_positions, c.d_model)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.decoder_layers))
        self.layer_norm = nn.LayerNorm(c.d_model)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                plan: AttentionPlan, cross: CrossPlan) -> torch.Tensor:
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(positions)
        for layer, cache in zip(self.layers, kv_cache, strict=True):
            x = layer(x, cache, plan, cross)
        return self.layer_norm(x)


class WhisperBody(nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)


class Whisper(nn.Module):
    """The whole model: `model.encoder`, `model.decoder` and, untied, `proj_out`."""

    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        self.config = c
        self.model = WhisperBody(c)
        self.proj_out = None if c.tie_word_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)

    def encode(self, features: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Windows' log-mel features [B, mels, frames] -> each window's cross-attention K/V, a pair a layer."""
        encoded = self.model.encoder(features)
        return [[layer.cross_kv(window) for layer in self.model.decoder.layers] for window in encoded]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.decoder.embed_tokens.weight if self.proj_out is None else self.proj_out.weight
        return hidden @ weight.T


def load_whisper(model_dir: str | Path, device: torch.device, dtype: torch.dtype) -> Whisper:
    """The folder's model with every tensor from its safetensors (one file or an index's shards)."""
    from engine.model.loader import safetensors_files

    config = WhisperConfig.from_dir(model_dir)
    with torch.device("meta"):
        model = Whisper(config)
    model = model.to(dtype).to_empty(device=device)
    state: dict[str, torch.Tensor] = {}
    for path in safetensors_files(Path(model_dir)):
        state |= load_file(str(path), device=str(device))
    if config.tie_word_embeddings:
        state.pop("proj_out.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}: not a Whisper checkpoint this engine reads (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    return model.to(dtype).eval()
