"""One prompt through a fine-tuned BERT encoder, mean-pooled, at request-path cost.

The request path scores one prompt at a time, where transformers' BertModel spends about as much CPU
in its Python module plumbing (masks, dropout, pooler, three projections per attention) as in the
arithmetic. This is the same function on the same weights, written for a single unpadded sequence:
query, key and value fused into one projection, attention as two small matmuls (at a few dozen tokens
torch's fused attention kernel costs more in set-up), no mask, no pooler, and the four linear maps of each
layer optionally int8 (dynamic quantization: int8 weights per output channel, activations quantized
per call). `rankers/listmle.py` scores with it; tests/rankers/test_lean_bert.py checks it against
BertModel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _fused_qkv(attention: nn.Module) -> nn.Linear:
    parts = (attention.query, attention.key, attention.value)
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


def _int8(linears: nn.ModuleList) -> nn.ModuleList:
    """Dynamic int8 quantization; torch marks `torch.ao.quantization` deprecated but ships it in the
    pinned 2.13. Where it is gone, the maps stay fp32."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic  # noqa: PLC0415

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(linears, {nn.Linear: per_channel_dynamic_qconfig})
    except (ImportError, AttributeError, RuntimeError) as exc:
        warnings.warn(f"int8 scoring unavailable ({exc}); scoring in fp32", stacklevel=2)
        return linears


class LeanBert:
    """`__call__(token_ids) -> (hidden,)`: BertModel(...).last_hidden_state.mean over the tokens."""

    def __init__(self, encoder: nn.Module, int8: bool = True) -> None:
        config, embeddings = encoder.config, encoder.embeddings
        self.hidden, self.heads = config.hidden_size, config.num_attention_heads
        self.eps = config.layer_norm_eps
        self.word = embeddings.word_embeddings.weight.detach()
        self.position = embeddings.position_embeddings.weight.detach()
        self.token_type = embeddings.token_type_embeddings.weight[0].detach()
        self.embed_norm = self._norm(embeddings.LayerNorm)
        self.norms = []
        linears = nn.ModuleList()
        for layer in encoder.encoder.layer:
            linears.extend([_fused_qkv(layer.attention.self), layer.attention.output.dense,
                            layer.intermediate.dense, layer.output.dense])
            self.norms.append((self._norm(layer.attention.output.LayerNorm), self._norm(layer.output.LayerNorm)))
        linears = _int8(linears) if int8 else linears
        self.linears = [tuple(linears[i:i + 4]) for i in range(0, len(linears), 4)]

    @staticmethod
    def _norm(norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        return norm.weight.detach(), norm.bias.detach()

    def _layer_norm(self, x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden,), norm[0], norm[1], self.eps)

    def __call__(self, token_ids: Sequence[int]) -> torch.Tensor:
        tokens = len(token_ids)
        head_dim = self.hidden // self.heads
        scale = head_dim ** -0.5
        with torch.inference_mode():
            x = self.word[torch.tensor(token_ids)] + self.position[:tokens] + self.token_type
            x = self._layer_norm(x, self.embed_norm)
            for (qkv, out, up, down), (norm1, norm2) in zip(self.linears, self.norms, strict=True):
                q, k, v = qkv(x).view(tokens, 3, self.heads, head_dim).permute(1, 2, 0, 3)
                weights = torch.softmax((q * scale) @ k.transpose(1, 2), dim=-1)
                attended = (weights @ v).transpose(0, 1).reshape(tokens, self.hidden)
                x = self._layer_norm(out(attended) + x, norm1)
                x = self._layer_norm(down(F.gelu(up(x))) + x, norm2)
            return x.mean(0)
