"""A sparse mixture-of-experts MLP (Qwen3-MoE, Mixtral): a linear router scores the experts, each
token goes through its top `num_experts_per_tok`, and their outputs are summed by the router's
softmax weights. The experts' weights are stacked, `gate_up_proj` [experts, 2 x inter, hidden] and
`down_proj` [experts, hidden, inter] (transformers 5's layout; the loader stacks Hub checkpoints'
per-expert tensors into them).

The token-expert pairs are sorted by expert once, so each expert's tokens are one contiguous run, and
the experts run as one grouped matmul (`torch.nn.functional.grouped_mm`, the kernel vLLM's and
transformers' MoE layers use), with no host sync. Where that kernel has no support (CUDA before
Ampere, or not bfloat16) a loop over the experts that got tokens does the same sums.

gpt-oss's variant (engine/model/gpt_oss.py) is this module with its config's switches: a router bias, the top-k
logits softmaxed after the choice (in their dtype, as transformers), expert biases and a clamped SwiGLU.
DeepSeekMoE's (engine/model/deepseek.py): always-on shared experts added to the routed ones, scores by softmax or
V3's sigmoid (plus a bias that steers the choice only), the choice limited to the best groups of experts, and the
weights scaled by `routed_scaling_factor`; its router runs in float32, as transformers' (GLM-4.5's too:
engine/model/glm4_moe.py)."""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.deepseek import DEEPSEEK_TYPES
from engine.model.glm4_moe import GLM4_MOE
from engine.model.parallel import SINGLE, TPGroup


class Experts(nn.Module):
    """`bias`: gpt-oss's per-expert biases on gate/up and down; `swiglu_limit`: its clamped SwiGLU.
    engine/model/mxfp4.py's subclass keeps the weights packed and supplies them per expert (`expert_weights`)."""

    groupable = True  # its stacked weights feed one grouped matmul

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, bias: bool = False,
                 swiglu_limit: float | None = None, swiglu_alpha: float = 1.702) -> None:
        super().__init__()
        self.num_experts, self.hidden_size, self.intermediate_size = num_experts, hidden_size, intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size)) if bias else None
        self.down_proj_bias = nn.Parameter(torch.empty(num_experts, hidden_size)) if bias else None
        self.swiglu_limit, self.swiglu_alpha = swiglu_limit, swiglu_alpha

    def act(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.swiglu_limit is None:
            return F.silu(gate) * up
        # gpt-oss: the gate clamped from above, up both ways, and up shifted by one (transformers' GptOssExperts).
        gate, up = gate.clamp(max=self.swiglu_limit), up.clamp(-self.swiglu_limit, self.swiglu_limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.swiglu_alpha))

    def grouped(self, x: torch.Tensor, offsets: torch.Tensor, row_experts: torch.Tensor) -> torch.Tensor:
        """x: [pairs, hidden] sorted by expert; offsets: int32 [experts], each expert's run's end;
        row_experts: [pairs] each row's expert (for the biases)."""
        gate_up = F.grouped_mm(x, self.gate_up_proj.transpose(1, 2), offs=offsets)
        if self.gate_up_proj_bias is not None:
            gate_up = gate_up + self.gate_up_proj_bias[row_experts]
        out = F.grouped_mm(self.act(*gate_up.chunk(2, dim=-1)), self.down_proj.transpose(1, 2), offs=offsets)
        return out if self.down_proj_bias is None else out + self.down_proj_bias[row_experts]

    def expert_weights(self, expert: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """One expert's (gate_up [2 x inter, hidden], down [hidden, inter])."""
        return self.gate_up_proj[expert], self.down_proj[expert]

    def looped(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        out, start = torch.empty_like(x), 0
        for expert, count in enumerate(counts):
            if count:
                rows = slice(start, start + count)
                gate_up_bias, down_bias = (None if b is None else b[expert]
                                           for b in (self.gate_up_proj_bias, self.down_proj_bias))
                gate_up, down = self.expert_weights(expert, x.dtype)
                gate, up = F.linear(x[rows], gate_up, gate_up_bias).chunk(2, dim=-1)
                out[rows] = F.linear(self.act(gate, up), down, down_bias)
                start += count
        return out


class Router(nn.Linear):
    """The experts' scores; `e_score_correction_bias` (DeepSeek-V3's) shifts them for the choice only."""

    def __init__(self, hidden_size: int, num_experts: int, bias: bool, score_correction_bias: bool) -> None:
        super().__init__(hidden_size, num_experts, bias=bias)
        self.e_score_correction_bias = nn.Parameter(torch.empty(num_experts)) if score_correction_bias else None


class SparseMoE(nn.Module):
    """Parameter names follow the checkpoints: `gate` is the router, `experts` the stacked experts,
    `shared_experts` DeepSeek's always-on MLP (given by the decoder layer, which owns the MLP class; Qwen2-MoE's
    `shared_expert`, loaded into it) and `shared_expert_gate` Qwen2-MoE's gate on it."""

    def __init__(self, config: ModelConfig, tp: TPGroup = SINGLE, shared_experts: nn.Module | None = None) -> None:
        super().__init__()
        self.tp = tp  # each rank's experts are a slice of every expert's width: the outputs are partial sums
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.topk_before_softmax = config.topk_before_softmax
        self.gate = Router(config.hidden_size, config.num_experts, config.moe_bias, config.score_correction_bias)
        self.shared_experts = shared_experts
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False) if config.shared_expert_gate else None
        self.sigmoid = config.scoring_func == "sigmoid"
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.float32_router = config.model_type in (*DEEPSEEK_TYPES, GLM4_MOE)
        self.experts = Experts(config.num_experts, config.hidden_size, config.moe_intermediate_size,
                               config.moe_bias, config.swiglu_limit, config.swiglu_alpha)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, top_k] in x's dtype, expert ids [T, top_k]); softmax in float32, as transformers,
        except gpt-oss's: over the chosen logits, in their dtype (transformers' GptOssTopKRouter)."""
        if self.topk_before_softmax:
            top, experts = self.gate(x).topk(self.top_k, dim=-1)
            return torch.softmax(top, dim=-1, dtype=top.dtype).to(x.dtype), experts
        if self.float32_router:
            return self._route_deepseek(x)
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), experts

    def _route_deepseek(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' DeepseekV2/V3TopkRouter: float32 scores; V3 chooses by score + bias and weighs by score."""
        logits = F.linear(x.float(), self.gate.weight.float())
        scores = logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)
        bias = self.gate.e_score_correction_bias
        choice = scores if bias is None else scores + bias.float()
        if self.n_group > 1:
            choice = self._within_best_groups(choice, top2_sum=bias is not None)
        experts = choice.topk(self.top_k, dim=-1)[1]
        weights = scores.gather(1, experts)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return (weights * self.routed_scaling_factor).to(x.dtype), experts

    def _within_best_groups(self, choice: torch.Tensor, top2_sum: bool) -> torch.Tensor:
        """`choice` [T, experts] with every expert outside each token's `topk_group` best groups at -inf; a group
        ranks by its best expert (V2's group_limited_greedy) or its two best summed (V3's noaux_tc)."""
        grouped = choice.view(choice.shape[0], self.n_group, -1)
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1) if top2_sum else grouped.max(dim=-1).values
        best = group_scores.topk(self.topk_group, dim=-1)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep[..., None], float("-inf")).view_as(choice)

    def forward(self, x: torch.Tensor, *, grouped: bool | None = None) -> torch.Tensor:
        weights, experts = self.route(x)
        flat_experts = experts.flatten()
        order = flat_experts.argsort(stable=True)  # pairs by expert, tokens in order within one
        tokens = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        if self.experts.groupable and (grouped if grouped is not None else grouped_mm_supported(x.device, x.dtype)):
            out = self.experts.grouped(x[tokens], counts.cumsum(0, dtype=torch.int32), flat_experts[order])
        else:
            out = self.experts.looped(x[tokens], counts.tolist())
        out = out * weights.flatten()[order].unsqueeze(-1)
        routed = self.tp.all_reduce(torch.zeros_like(x).index_add_(0, tokens, out))
        if self.shared_experts is None:
            return routed
        shared = self.shared_experts(x)
        if self.shared_expert_gate is not None:  # Qwen2-MoE's, on the whole (all-reduced) output
            shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
        return routed + shared


@cache
def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (8, 0)
    return False
