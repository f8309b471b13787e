"""Tensor parallelism in Megatron-LM's layout (vLLM's): each of N ranks holds 1/N of every attention
layer's heads (query and KV alike) and 1/N of every MLP's intermediate width, experts included. q/k/v
and gate/up are split by output rows (column-parallel), o and down by input columns (row-parallel), so
each rank's o and down produce a partial sum of the full hidden state and one all-reduce after each
makes it whole; norms, embeddings, the LM head and MoE routers are replicated. Every rank's KV cache
holds its own heads of the same blocks, so the block tables are the same everywhere.

`TPGroup` is one rank's view: its rank, the group's size and a process group of its own (not torch's
global default, so one process can host several engines); ranks on one CPU host sum through shared
memory instead (engine/model/shm_allreduce.py), far quicker than gloo's loopback TCP. `shard_config` is the model a rank builds;
`shard_tensor` cuts a checkpoint tensor to that rank's part as it is read."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.model.config import ModelConfig
from engine.model.shm_allreduce import ShmAllReduce

# Checkpoint names (after the loader's Mixtral renaming) -> the dimension split across ranks.
_COLUMN = re.compile(r".*\.(self_attn\.(q|k|v)_proj|mlp\.(shared_experts\.)?(gate|up)_proj|experts\.\d+\.(gate|up)_proj)\."
                     r"(weight|bias|weight_scale)")
_ROW = re.compile(r".*\.(self_attn\.o_proj|mlp\.(shared_experts\.)?down_proj|experts\.\d+\.down_proj)\.weight")
_ROW_BIAS = re.compile(r".*\.(self_attn\.o_proj|mlp\.down_proj)\.bias")
# transformers 5: [experts, 2 x inter, hidden]; gpt-oss's bias [experts, 2 x inter] too, gates first
# MXFP4 (engine/model/mxfp4.py): blocks [experts, out, in / 32, 16] and scales [experts, out, in / 32] are cut
# the same way, down's by whole 32-value blocks (Mxfp4Experts refuses widths that would split one).
_STACKED_GATE_UP = re.compile(r".*\.mlp\.experts\.gate_up_proj(_bias|_blocks|_scales)?")
_STACKED_DOWN = re.compile(r".*\.mlp\.experts\.down_proj(_blocks|_scales)?")  # [experts, hidden, inter]
# gpt-oss: the down projection's expert biases [experts, hidden] and a sink per query head.
_STACKED_DOWN_BIAS = re.compile(r".*\.mlp\.experts\.down_proj_bias")
_SINKS = re.compile(r".*\.self_attn\.sinks")


@dataclass
class TPGroup:
    """One rank of a tensor-parallel group; `group` is None for a single rank (nothing to reduce)."""

    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed ProcessGroup
    shm: ShmAllReduce | None = None  # CPU ranks on one host

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums `x` over the ranks, in place."""
        if self.shm is not None and x.device.type == "cpu" and x.dtype == self.shm.dtype and x.is_contiguous():
            return self.shm(x)
        if self.group is not None:
            self.group.allreduce([x]).wait()
        return x


SINGLE = TPGroup()


def connect(rank: int, size: int, port: int, device: torch.device, timeout_s: float,
            shm: ShmAllReduce | None = None) -> TPGroup:
    """Joins the group whose rank 0 serves a TCP store on 127.0.0.1:`port`: gloo on a CPU, NCCL on CUDA,
    and `shm` for CPU tensors where given. A peer that dies makes the next all-reduce raise; one that
    hangs, after `timeout_s`."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, size, rank == 0, timeout=timeout)
    if device.type == "cuda":  # not run here: no GPU was lent to this project's sessions
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(store, rank, size, options)
    else:
        group = dist.ProcessGroupGloo(store, rank, size, timeout)
    return TPGroup(rank, size, group, shm)


def shard_config(config: ModelConfig, size: int) -> ModelConfig:
    """The model one of `size` ranks builds: its share of the heads and of the MLP widths."""
    if size == 1:
        return config
    problems = [f"{name} {value}" for name, value in (
        ("num_attention_heads", config.num_heads), ("num_key_value_heads", config.num_kv_heads),
        ("intermediate_size", config.intermediate_size), ("moe_intermediate_size", config.moe_intermediate_size),
        ("shared_expert_intermediate_size", config.shared_expert_intermediate_size)) if value % size]
    if problems:
        raise ValueError(f"tensor_parallel_size {size} must divide {', '.join(problems)}")
    return replace(config, num_heads=config.num_heads // size, num_kv_heads=config.num_kv_heads // size,
                   intermediate_size=config.intermediate_size // size,
                   moe_intermediate_size=config.moe_intermediate_size // size,
                   shared_expert_intermediate_size=config.shared_expert_intermediate_size // size)


def shard_tensor(name: str, tensor: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """This rank's part of checkpoint tensor `name` (a copy where it is a part)."""
    if tp.size == 1:
        return tensor
    if _COLUMN.fullmatch(name):
        return tensor if tensor.numel() == 1 else tensor.chunk(tp.size, dim=0)[tp.rank].clone()
    if _ROW.fullmatch(name):
        return tensor.chunk(tp.size, dim=1)[tp.rank].clone()
    if _ROW_BIAS.fullmatch(name) or _STACKED_DOWN_BIAS.fullmatch(name):  # added once, after the sum
        return tensor if tp.rank == 0 else torch.zeros_like(tensor)
    if _STACKED_GATE_UP.fullmatch(name):
        gate, up = tensor.chunk(2, dim=1)
        return torch.cat([gate.chunk(tp.size, dim=1)[tp.rank], up.chunk(tp.size, dim=1)[tp.rank]], dim=1)
    if _SINKS.fullmatch(name):
        return tensor.chunk(tp.size)[tp.rank].clone()
    if _STACKED_DOWN.fullmatch(name):
        return tensor.chunk(tp.size, dim=2)[tp.rank].clone()
    return tensor
