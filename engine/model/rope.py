"""Rotary position embeddings: a precomputed cos/sin table indexed by absolute position, with the
`linear`, Llama-3 (`llama3`), YaRN (`yarn`, Qwen's long-context setting) and LongRoPE (`longrope`, Phi-3's)
frequency scalings, over the first `rotary_dim` dims of each head (Phi-4-mini turns 3/4 of them).
Matches transformers' float32 math.

LongRoPE has two sets of frequencies: transformers takes `short_factor` while a sequence is at most
`original_max_position_embeddings` long and `long_factor` past that. Here a sequence whose prompt is
longer takes the long set for all its tokens (ModelConfig.long_rope_offset: its positions index a second table),
as transformers does; a shorter one takes the short set up to that length and the long one for the
tokens past it. transformers instead recomputes the whole sequence with the long set at that point (its
Phi-3 `prepare_inputs_for_generation`), which would mean recomputing the sequence's cache here.

M-RoPE (Qwen2.5-VL, `mrope_section`): positions are [3, T] (temporal, height, width ids: engine/mrope_positions.py)
and each rotary frequency takes its cos/sin from the row of its section (transformers'
`recomposition_frequencies`: the first section's frequencies from the temporal row, and so on), the same rows for
both halves of the head; a text token's three ids are equal, so it turns as plain RoPE. Qwen3-VL's
(`mrope_interleaved`) interleaves the rows over the frequencies instead (engine/model/qwen3_vl.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from engine.model.config import ModelConfig
from engine.model.deepseek import yarn_mscale
from engine.model.qwen3_vl import interleaved_mrope_rows


def inverse_frequencies(config: ModelConfig, long: bool = False) -> torch.Tensor:
    """`long`: LongRoPE's long set (its short one otherwise)."""
    dim = config.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    scaling = config.rope_scaling or {}
    if config.rope_type == "longrope":
        factors = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
        return 1.0 / (factors * config.rope_theta**exponents)
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_type == "linear":
        return inv_freq / scaling["factor"]
    if config.rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    if config.rope_type == "yarn":
        return _yarn_scaled(config.rope_theta, dim, scaling)
    return inv_freq


def attention_scaling(config: ModelConfig) -> float:
    """The factor on cos and sin: 1 except under YaRN, whose logits are sharpened as the context grows
    (its paper's 0.1 ln(s) + 1, or the ratio of two such terms where `mscale`s are given), and LongRoPE
    (sqrt(1 + ln(factor) / ln(original)) unless given: engine/model/families.py)."""
    scaling = config.rope_scaling or {}
    if config.rope_type == "longrope":
        return float(scaling["attention_factor"])
    if config.rope_type != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor, mscale, mscale_all_dim = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def _yarn_scaled(base: float, dim: int, scaling: dict) -> torch.Tensor:
    # Dimensions that turn many times within the original context keep their frequency
    # (extrapolation); slow ones are divided by `factor` (interpolation); a linear ramp between.
    factor = scaling["factor"]
    original = scaling["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolated = 1 - ramp
    wavelengths = base ** (torch.arange(0, dim, 2).float() / dim)  # transformers' exact float ops
    return 1.0 / (factor * wavelengths) * (1 - extrapolated) + 1.0 / wavelengths * extrapolated


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


# Past this many positions a cos/sin table costs gigabytes (Llama 4 Scout's 10.5M: 5.4 GB in bf16, more while it
# is built), so such a model's cos/sin are computed each call for the positions it has.
TABLE_POSITIONS = 1 << 17


class RotaryEmbedding:
    """Holds cos/sin for every position up to `max_position_embeddings`; applied in place of HF's
    per-call computation (same float32 products, so the same values). `local`: Gemma 3's sliding layers'
    plain RoPE of base `local_rope_theta`. Under LongRoPE the table is two: positions short then long past
    the original context, then every position long (ModelConfig.long_rope_offset). Past TABLE_POSITIONS
    positions there is no table: each call computes its positions' cos/sin as the table would hold them."""

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype, local: bool = False) -> None:
        if local:
            config = replace(config, rope_theta=config.local_rope_theta, rope_scaling=None)
        self.rotary_dim, self.dtype = config.rotary_dim, dtype
        self.scale = attention_scaling(config)
        self.mrope_rows = _mrope_rows(config, device)
        self.inv_freq = inverse_frequencies(config).to(device)
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None
        if config.max_position_embeddings > TABLE_POSITIONS:
            if config.rope_type == "longrope":  # its table's layout is what long_rope_offset indexes
                raise ValueError(f"LongRoPE over {config.max_position_embeddings} positions is not supported")
            return
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * inverse_frequencies(config)[None, :]
        if config.rope_type == "longrope":
            long = positions[:, None] * inverse_frequencies(config, long=True)[None, :]
            original = (config.rope_scaling or {})["original_max_position_embeddings"]
            freqs = torch.cat([freqs[:original], long[original:], long])
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.scale).to(device=device, dtype=dtype)
        self.sin = (emb.sin() * self.scale).to(device=device, dtype=dtype)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., rotary_dim] cos and sin of `positions`: the table's rows, or computed as the table computes them."""
        if self.cos is not None and self.sin is not None:
            return self.cos[positions], self.sin[positions]
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scale).to(self.dtype), (emb.sin() * self.scale).to(self.dtype)

    def __call__(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, num_heads, head_dim], k: [T, num_kv_heads, head_dim], positions: [T], or [3, T] under M-RoPE."""
        cos, sin = self.cos_sin(positions)
        if self.mrope_rows is not None:  # [3, T, dim] -> each dim from its section's row
            rows = self.mrope_rows.expand(1, positions.shape[-1], -1)
            cos, sin = cos.gather(0, rows)[0], sin.gather(0, rows)[0]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        if self.rotary_dim < q.shape[-1]:  # partial rotary: the trailing dims pass through
            return _rotate_part(q, cos, sin, self.rotary_dim), _rotate_part(k, cos, sin, self.rotary_dim)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _mrope_rows(config: ModelConfig, device: torch.device) -> torch.Tensor | None:
    """M-RoPE: which of a token's 3 position rows each rotary dim reads (None without M-RoPE)."""
    if not config.mrope_section:
        return None
    half = torch.repeat_interleave(torch.arange(len(config.mrope_section)) % 3, torch.tensor(config.mrope_section))
    if config.mrope_interleaved:  # Qwen3-VL's: every third frequency height's, then width's
        half = interleaved_mrope_rows(config.mrope_section)
    if len(half) != config.rotary_dim // 2:
        raise ValueError(f"mrope_section {config.mrope_section} must sum to head_dim / 2 ({config.rotary_dim // 2})")
    return torch.cat([half, half]).to(device)


def _rotate_part(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    turned, passed = x[..., :dim], x[..., dim:]
    return torch.cat([turned * cos + _rotate_half(turned) * sin, passed], dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
