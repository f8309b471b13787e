"""An EAGLE draft head (Li et al. 2024, EAGLE-1/EAGLE-2 checkpoints such as yuhuili/EAGLE-LLaMA3-Instruct-8B)
and the runner that drafts with it (engine/eagle.py proposes with it).

The head is one Llama decoder layer fed, at position j, fc([embed(token j + 1), feature j]), where feature j
is the target's last hidden state at j after its final norm (what the target's lm_head reads: EAGLE's own
code takes the base model's output, and vLLM passes the target's model output, normed). Its output at j is
its guess of feature j + 1; the target's lm_head turns it into the next token, with no norm in between.
As in EAGLE's code and vLLM's `llama_eagle.py`, the layer has no input norm (the fc's output goes straight
to attention) and the head no final norm. The checkpoint's layout (EAGLE's): `fc.weight` [hidden, 2 hidden]
(optionally `fc.bias`), `layers.0.*` as a Llama layer's, and optionally `embed_tokens.weight` and
`lm_head.weight`; the target's are used for those it omits.

The runner sleeps with its engine (engine/sleep.py) as a target runner does (engine/runner_sleep.py): its
KV cache freed, its own weights (fc, layer, and its embedding table and lm_head where it has them, held
as buffers for that) kept in host memory at level 1 or dropped at level 2 and reloaded from its folder."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

from engine.batch import ScheduledBatch
from engine.kv_layout import step_tables
from engine.model.attention import AttentionMetadata, AttentionPlan, GatherWorkspace
from engine.model.config import ModelConfig
from engine.model.llama import DecoderLayer
from engine.model.logits_processors import process_logits
from engine.model.rope import RotaryEmbedding
from engine.model.sampler import Sampler
from engine.runner_sleep import RunnerSleep
from engine.sequence import Sequence
from engine.step_rows import sampled_rows

if TYPE_CHECKING:
    from engine.torch_runner import TorchModelRunner

# The target's feature rows for a request's positions [start, start + n): engine/eagle.py `TargetFeatures`.
FeatureRows = Callable[[Sequence, int, int, "torch.Tensor | None"], torch.Tensor]


def read_head_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The head's tensors by EAGLE's names (a leading `model.` dropped), from safetensors or pytorch_model.bin."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        weights = {name: t for f in files for name, t in load_file(str(f)).items()}
    elif (folder / "pytorch_model.bin").is_file():
        weights = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"EAGLE head {folder}: no *.safetensors or pytorch_model.bin")
    return {name.removeprefix("model."): tensor for name, tensor in weights.items()}


def layer_state(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """`layers.0.*` in the engine's packed layout (q/k/v and gate/up stacked); input_layernorm ignored."""
    def get(name: str) -> torch.Tensor:
        if f"layers.0.{name}" not in weights:
            raise ValueError(f"the EAGLE head has no layers.0.{name}")
        return weights[f"layers.0.{name}"]

    state = {"self_attn.qkv_proj.weight": torch.cat([get(f"self_attn.{p}_proj.weight") for p in "qkv"]),
             "self_attn.o_proj.weight": get("self_attn.o_proj.weight"),
             "mlp.gate_up_proj.weight": torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")]),
             "mlp.down_proj.weight": get("mlp.down_proj.weight"),
             "post_attention_layernorm.weight": get("post_attention_layernorm.weight")}
    if config.qkv_bias:
        state["self_attn.qkv_proj.bias"] = torch.cat([get(f"self_attn.{p}_proj.bias") for p in "qkv"])
    return state


class EagleHead(nn.Module):
    """fc + one decoder layer; the embedding table and lm_head are the target's unless the head has its own
    (read from the target runner at each call, so a target that reloads its weights is followed)."""

    checkpoint_buffers = ("own_embed", "own_head")  # its weights: a level 2 sleep drops them (runner_sleep.py)

    def __init__(self, config: ModelConfig, target: TorchModelRunner, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.config = config
        self.target = target
        self.fc = nn.Linear(2 * hidden, hidden, bias="fc.bias" in weights)
        self.layer = DecoderLayer(config, 0)
        self.layer.input_layernorm = nn.Identity()  # EAGLE's first layer has none
        self.own_embed: torch.Tensor | None
        self.own_head: torch.Tensor | None
        self.register_buffer("own_embed", weights.get("embed_tokens.weight"), persistent=False)
        self.register_buffer("own_head", weights.get("lm_head.weight"), persistent=False)
        self.load_weights(weights)
        self.rope: RotaryEmbedding | None = None

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """The checkpoint's values copied into the head's tensors (at load, and after a level 2 sleep)."""
        self.fc.load_state_dict({k.removeprefix("fc."): v for k, v in weights.items() if k.startswith("fc.")})
        self.layer.load_state_dict(layer_state(weights, self.config))
        for buffer, name in (("own_embed", "embed_tokens.weight"), ("own_head", "lm_head.weight")):
            if (tensor := getattr(self, buffer)) is not None:
                tensor.copy_(weights[name])

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.own_embed if self.own_embed is not None else self.target.model.model.embed_tokens.weight
        return nn.functional.embedding(input_ids, table)

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        assert self.rope is not None
        hidden = self.fc(torch.cat([self.embed(input_ids), features], dim=-1))
        return self.layer(hidden, positions, self.rope, kv_cache, plan)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.own_head if self.own_head is not None else self.target.model.lm_head.weight
        return nn.functional.linear(hidden, head).float()


def load_eagle_head(folder: Path, target: TorchModelRunner) -> EagleHead:
    """The head in `folder` for `target`, on its device and dtype; ValueError, saying why, where it cannot
    draft for it (another width or vocabulary, a tensor shaped for another model, a missing tensor)."""
    if not (folder / "config.json").is_file():
        raise ValueError(f"EAGLE head {str(folder)!r} is not a model folder (no config.json)")
    if target.tensor_parallel_size > 1:
        raise ValueError("an EAGLE head drafts for a target on one rank: its lm_head is split over several here")
    config, ours = ModelConfig.from_dir(folder), target.full_config
    for field in ("hidden_size", "vocab_size"):
        if getattr(config, field) != getattr(ours, field):
            raise ValueError(f"the EAGLE head's {field} ({getattr(config, field)}) is not the target's "
                             f"({getattr(ours, field)}): it was trained for another model")
    weights = read_head_weights(folder)
    expected = {"fc.weight": (config.hidden_size, 2 * config.hidden_size),
                "embed_tokens.weight": (config.vocab_size, config.hidden_size),
                "lm_head.weight": (config.vocab_size, config.hidden_size)}
    if "fc.weight" not in weights:
        raise ValueError(f"EAGLE head {folder}: no fc.weight (is this an EAGLE checkpoint?)")
    for name, shape in expected.items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise ValueError(f"the EAGLE head's {name} is {tuple(weights[name].shape)}, not {shape}: "
                             "it does not fit this target")
    weights = on_target(weights, target)
    with torch.device(target.device):
        head = EagleHead(config, target, weights).to(target.dtype)
    head.rope = RotaryEmbedding(config, target.device, target.dtype)
    return head.eval()


def on_target(weights: dict[str, torch.Tensor], target: TorchModelRunner) -> dict[str, torch.Tensor]:
    return {name: t.to(target.device, target.dtype) for name, t in weights.items()}


class EagleRunner(RunnerSleep):
    """What engine/draft_model.py's proposer drives (a runner's `execute`, `sampler`, `max_model_len`,
    `eos_token_ids`) over an EAGLE head and its own paged KV cache; each batch token's feature comes from
    `feature_rows` (the target's, or the head's own output at the row before, for a draft). `model_dir`:
    the head's folder, which a level 2 sleep reloads it from."""

    workers = None  # one rank (load_eagle_head refuses a split target)

    def __init__(self, head: EagleHead, target: TorchModelRunner, num_blocks: int, block_size: int,
                 model_dir: Path) -> None:
        c = head.config
        self.head, self.target, self.block_size = head, target, block_size
        self.model, self.model_dir = head, model_dir  # type: ignore[assignment]  # what RunnerSleep frees
        self.host_kv = torch.empty(0)  # no host tier: nothing there to free
        self.device, self.dtype = target.device, target.dtype
        self.kv_cache = torch.zeros(2, num_blocks, block_size, c.num_kv_heads, c.head_dim, dtype=self.dtype,
                                    device=self.device)
        self.sampler = Sampler()
        self.eos_token_ids = target.eos_token_ids
        self.max_model_len = min(c.max_position_embeddings, target.max_model_len)
        self.workspace = GatherWorkspace() if self.device.type == "cpu" else None
        self.feature_rows: FeatureRows | None = None  # set by engine/eagle.py
        self.last_output: dict[str, torch.Tensor] = {}  # request id -> the head's output at its last row

    def execute(self, batch: ScheduledBatch) -> list[int]:
        assert self.feature_rows is not None
        ids, positions, features, tables, seq_of_token, ends = [], [], [], [], [], []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            ids += seq.token_ids[start: start + n]
            positions += range(start, start + n)
            features.append(self.feature_rows(seq, start, n, self.last_output.get(seq.request_id)))
            tables.append([seq.block_table[: -(-(start + n) // self.block_size)]])
            seq_of_token += [i] * n
            ends.append(len(ids))
        positions_t = torch.tensor(positions)
        slots, block_tables = step_tables(tables, torch.tensor(seq_of_token), positions_t, self.block_size)
        lens = list(batch.num_new_tokens)
        meta = AttentionMetadata(slot_mapping=slots[0].to(self.device), block_tables=block_tables[0].to(self.device),
                                 query_starts=[end - n for end, n in zip(ends, lens, strict=True)], query_lens=lens,
                                 context_lens=[s.num_computed_tokens + n for s, n in zip(batch.seqs, lens, strict=True)],
                                 block_size=self.block_size)
        with torch.inference_mode():
            plan = AttentionPlan.build(meta, None, self.workspace)
            hidden = self.head(torch.tensor(ids, device=self.device), torch.cat(features).to(self.dtype),
                               positions_t.to(self.device), self.kv_cache, plan)
            self.last_output = {seq.request_id: hidden[end - 1] for seq, end in zip(batch.seqs, ends, strict=True)}
            sampling = batch.sampling_indices
            if not sampling:
                return []
            raw = self.head.logits(hidden[torch.tensor([ends[i] - 1 for i in sampling], device=self.device)])
            rows, generated, _ = sampled_rows(batch)
            logits = process_logits(raw, rows, self.eos_token_ids)
            return self.sampler(logits, [row.params for row in rows], generated, None)

    def sleep_memory(self, level: int, tags: Collection[str]) -> dict[str, int]:
        self.last_output = {}  # rows of the last pass's hidden states, which they keep alive
        return super().sleep_memory(level, tags)

    def _load_everywhere(self, model_dir: Path) -> None:
        with torch.no_grad():
            self.head.load_weights(on_target(read_head_weights(model_dir), self.target))
        self.weights_stale = False

    def close(self) -> None:
        if self.target.hidden_states_listener is not None:
            self.target.hidden_states_listener = None
