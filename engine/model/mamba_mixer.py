"""The Mamba-2 mixer on a flattened varlen batch, in plain torch (what transformers' torch path and vLLM's
MambaMixer2 compute).

in_proj gives each token a gate z, the conv input xBC and a time step per head. xBC goes through a causal
depthwise conv (kernel `d_conv`) that continues each sequence's conv state (its last d_conv - 1 inputs), then
SiLU, and splits into x [heads, head_dim], B and C [n_groups, d_state] (each group shared by heads / n_groups
heads). With dt = clamp(softplus(dt + dt_bias), dt_limit) and A = -exp(A_log), the state h [heads, head_dim,
d_state] evolves as h <- exp(dt A) h + dt x B^T and the output is y = h C + D x. y goes through an RMSNorm gated
by SiLU(z) (over each of n_groups groups) and out_proj.

Single-token rows (decodes) take that recurrence one step, all rows at once over their state slots. A longer
row (a prefill chunk) runs the SSD chunked scan (Mamba-2's state space duality: quadratic within chunks of
`chunk_size`, a recurrence over chunk states between them) from the state its slot holds, so a chunked
prefill continues where the previous chunk stopped; the final state goes back to the slot."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.mamba_state import MambaStep
from engine.model.mamba_config import HybridSpec


class GatedRMSNorm(nn.Module):
    """RMSNorm of x * silu(gate) over groups of `group_size`, in float32, scaled in the input dtype."""

    def __init__(self, size: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        gated = x.float() * F.silu(gate.float())
        grouped = gated.view(*gated.shape[:-1], -1, self.group_size)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * grouped.view(gated.shape).to(dtype)


class Mamba2Mixer(nn.Module):
    """Parameter names follow the checkpoints' `mamba.` modules."""

    def __init__(self, spec: HybridSpec, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.spec = spec
        inner, conv_dim, heads = spec.intermediate_size, spec.conv_dim, spec.num_heads
        self.in_proj = nn.Linear(hidden_size, inner + conv_dim + heads, bias=spec.proj_bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, spec.d_conv, groups=conv_dim, bias=spec.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self.A_log = nn.Parameter(torch.empty(heads))
        self.D = nn.Parameter(torch.empty(heads))
        self.norm = GatedRMSNorm(inner, inner // spec.n_groups, eps)
        self.out_proj = nn.Linear(inner, hidden_size, bias=spec.proj_bias)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor, step: MambaStep) -> torch.Tensor:
        """x: [T, hidden]; conv_state [slots, conv_dim, d_conv - 1] and ssm_state [slots, heads, head_dim, d_state]:
        this layer's, updated in place for the step's sequences."""
        spec = self.spec
        gate, xbc, dt = self.in_proj(x).split([spec.intermediate_size, spec.conv_dim, spec.num_heads], dim=-1)
        if step.decode_only:
            y = self._decode(xbc, dt, conv_state, ssm_state, step.decode_slots)
        else:
            y = x.new_empty(x.shape[0], spec.intermediate_size)
            if step.decode_rows is not None:
                rows = step.decode_rows
                y[rows] = self._decode(xbc[rows], dt[rows], conv_state, ssm_state, step.decode_slots)
            for start, end, slot, snapshot in step.prefills:
                y[start:end] = self._prefill(xbc[start:end], dt[start:end], conv_state, ssm_state, slot)
                if snapshot >= 0:  # a session's state at a block boundary (engine/mamba_sessions.py)
                    conv_state[snapshot], ssm_state[snapshot] = conv_state[slot], ssm_state[slot]
        return self.out_proj(self.norm(y, gate))

    def _time_step(self, dt: torch.Tensor) -> torch.Tensor:
        low, high = self.spec.dt_limit
        return F.softplus(dt.float() + self.dt_bias.float()).clamp(low, high)

    def _split(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xBC [N, conv_dim] after the conv -> x [N, heads, head_dim], B and C [N, heads, d_state] (float32)."""
        spec = self.spec
        groups = spec.n_groups * spec.d_state
        x, b, c = xbc.split([spec.intermediate_size, groups, groups], dim=-1)
        rows, per_group = x.shape[0], spec.num_heads // spec.n_groups
        b = b.float().view(rows, spec.n_groups, spec.d_state).repeat_interleave(per_group, dim=1)
        c = c.float().view(rows, spec.n_groups, spec.d_state).repeat_interleave(per_group, dim=1)
        return x.view(rows, spec.num_heads, spec.head_dim), b, c

    def _decode(self, xbc: torch.Tensor, dt: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                slots: torch.Tensor) -> torch.Tensor:
        """One recurrence step for D single-token rows; xbc [D, conv_dim], dt [D, heads]."""
        window = torch.cat([conv_state.index_select(0, slots), xbc.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
        conv_state.index_copy_(0, slots, window[:, :, 1:])
        conv = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        x, b, c = self._split(F.silu(conv).to(xbc.dtype))
        dt = self._time_step(dt)  # [D, heads]
        decay = torch.exp(dt * -torch.exp(self.A_log.float()))
        state = ssm_state.index_select(0, slots).float() * decay[:, :, None, None]
        state = state + (dt[:, :, None] * x.float())[..., None] * b[:, :, None, :]
        ssm_state.index_copy_(0, slots, state.to(ssm_state.dtype))
        y = (state @ c.unsqueeze(-1)).squeeze(-1) + self.D.float()[:, None] * x.float()
        return y.to(xbc.dtype).flatten(1)

    def _prefill(self, xbc: torch.Tensor, dt: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                 slot: int) -> torch.Tensor:
        """One sequence's chunk of L tokens from its slot's state; xbc [L, conv_dim], dt [L, heads]."""
        window = torch.cat([conv_state[slot], xbc.t().to(conv_state.dtype)], dim=-1)  # [conv_dim, d_conv - 1 + L]
        conv_state[slot] = window[:, window.shape[1] - conv_state.shape[-1]:]
        conv = F.conv1d(window.unsqueeze(0), self.conv1d.weight, self.conv1d.bias, groups=self.spec.conv_dim)
        x, b, c = self._split(F.silu(conv[0].t()).to(xbc.dtype))
        dt = self._time_step(dt)
        y, final = ssd_scan(x.float(), dt, -torch.exp(self.A_log.float()), b, c, self.spec.chunk_size,
                            ssm_state[slot].float())
        ssm_state[slot] = final.to(ssm_state.dtype)
        return (y + self.D.float()[:, None] * x.float()).to(xbc.dtype).flatten(1)


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T]: out[i, j] = x[j+1] + ... + x[i] for i >= j, -inf above the diagonal."""
    length = x.shape[-1]
    expanded = x[..., None].expand(*x.shape, length)
    below = torch.ones(length, length, dtype=torch.bool, device=x.device).tril(-1)
    sums = expanded.masked_fill(~below, 0).cumsum(dim=-2)
    return sums.masked_fill(~below.logical_or(torch.eye(length, dtype=torch.bool, device=x.device)), -torch.inf)


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk: int,
             initial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's chunked scan of one sequence (float32): x [L, heads, head_dim], dt [L, heads], a [heads],
    b and c [L, heads, d_state], `initial` state [heads, head_dim, d_state] -> (y [L, heads, head_dim] without
    the D skip, the final state). Padding to whole chunks adds nothing: a padded step has dt x = 0 and decay 1."""
    length = x.shape[0]
    pad = -length % chunk
    x_dt, a_dt = x * dt[..., None], a * dt  # the discretised input and log-decay
    x_dt, a_dt, b, c = (F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad)) if pad else t for t in (x_dt, a_dt, b, c))
    chunks = (length + pad) // chunk
    x_dt, b, c = (t.reshape(chunks, chunk, *t.shape[1:]) for t in (x_dt, b, c))  # [chunks, l, heads, ...]
    a_dt = a_dt.reshape(chunks, chunk, -1).permute(2, 0, 1)  # [heads, chunks, l]
    a_cum = a_dt.cumsum(dim=-1)
    # Within each chunk: attention-like, y_i = sum_{j <= i} (c_i . b_j) exp(a_{j+1} + ... + a_i) x_j dt_j.
    decay = torch.exp(segment_sum(a_dt))  # [heads, chunks, l, s]
    y = torch.einsum("clhn,cshn,hcls,cshp->clhp", c, b, decay, x_dt)
    # Each chunk's own state at its end, then the recurrence over chunks from the initial state.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [heads, chunks, l]
    states = torch.einsum("clhn,hcl,clhp->chpn", b, to_end, x_dt)
    states = torch.cat([initial[None], states])  # [chunks + 1, heads, head_dim, d_state]
    across = torch.exp(segment_sum(F.pad(a_cum[..., -1], (1, 0))))  # [heads, chunks + 1, chunks + 1]
    states = torch.einsum("hzc,chpn->zhpn", across, states)
    entering, final = states[:-1], states[-1]
    # What each chunk's entering state adds to its outputs.
    y = y + torch.einsum("clhn,chpn,hcl->clhp", c, entering, torch.exp(a_cum))
    return y.reshape(chunks * chunk, *y.shape[2:])[:length], final
