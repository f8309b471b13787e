"""Small building blocks of the decoder: RMSNorm, the token embedding, and a linear layer that packs
several HF projections (q/k/v, gate/up) into one matmul."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """`unit_offset`: Gemma's, which scales by (1 + weight) in float32 and rounds after. `centered`: Cohere's
    LayerNorm without bias (the mean taken off first), scaled in float32 too."""

    def __init__(self, hidden_size: int, eps: float, unit_offset: bool = False, centered: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.unit_offset = unit_offset
        self.centered = centered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and scale in the model dtype, the order transformers uses.
        input_dtype = x.dtype
        x = x.float()
        if self.centered:
            x = x - x.mean(-1, keepdim=True)
            return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(input_dtype)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(input_dtype)
        return self.weight * x.to(input_dtype)


class TokenEmbedding(nn.Embedding):
    """nn.Embedding without its random initialisation: the table always comes from the checkpoint, and
    `normal_` on the meta device the model is built on imports torch._dynamo (1-2 s of an engine's start)."""

    def reset_parameters(self) -> None:
        pass


class PackedLinear(nn.Linear):
    """One nn.Linear standing in for several checkpoint projections stacked along the output dim;
    `load_shard` copies checkpoint projection `index` into its rows."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes = output_sizes

    def load_shard(self, param: nn.Parameter, index: int, tensor: torch.Tensor) -> None:
        offset = sum(self.output_sizes[:index])
        target = param.data.narrow(0, offset, self.output_sizes[index])
        if target.shape != tensor.shape:
            raise ValueError(f"shard {index}: expected shape {tuple(target.shape)}, got {tuple(tensor.shape)}")
        target.copy_(tensor)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.split(self.output_sizes, dim=-1)
