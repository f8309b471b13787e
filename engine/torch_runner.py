"""TorchModelRunner: the ModelRunner that runs a real decoder. It owns the paged KV cache
([layers, 2, num_blocks, block_size, kv_heads, head_dim], in the model's dtype or as fp8 bytes:
engine/model/kv_quant.py), turns a ScheduledBatch into flat step tensors
(input ids, positions, slot mapping, block tables) and samples one token per finishing sequence, and
one after each draft token a decoding sequence carries (engine/speculation.py). Behind the cache, a host tier
(page-locked memory) and a disk tier (a file of slots: engine/disk_store.py) take the blocks the block
manager evicts; `transfer_kv` performs the copies it plans."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

import torch

from engine.batch import ScheduledBatch
from engine.disk_store import DiskKVStore
from engine.encoder_cache import ImageFeatures, Span, spliced_embeddings
from engine.eos_tokens import read_eos_token_ids
from engine.hybrid_attention import HybridAttention, hybrid_attention
from engine.image_inputs import bidirectional_spans
from engine.kv_copies import TierCopies
from engine.kv_layout import kv_bytes_per_block, runner_kv_groups, step_tables
from engine.logprobs import TokenLogprobs, token_logprobs
from engine.mamba_state import DEFAULT_STATE_SLOTS, refuse_hybrid_lora, state_pool
from engine.model.attention import AttentionMetadata, AttentionPlan, GatherWorkspace
from engine.model.config import ModelConfig
from engine.model.deepseek import refuse_unsupported
from engine.model.kv_quant import FP8KVFormat, fp8_format
from engine.model.loader import load_model, safetensors_files
from engine.model.logits_processors import process_logits
from engine.model.lora import LoRAStep, LoRAWeights, load_lora, shard_lora, weights_to, wrap_projections
from engine.model.mxfp4 import is_mxfp4_checkpoint
from engine.model.parallel import SINGLE, TPGroup, shard_config
from engine.model.quant_config import serving_scheme
from engine.model.sampler import Sampler
from engine.model.vision import VisionConfig, load_vision_encoder
from engine.prompt_embeds import with_step_rows
from engine.rope_positions import RopePositions
from engine.runner_sleep import RunnerSleep
from engine.step_rows import proposed_drafts, sampled_rows, score_prompts, scored_prompt_positions
from engine.structured_output import mask_disallowed
from engine.thinking_budget import forced_rows, mask_to_forced
from engine.tp_workers import StepInputs, TensorParallelWorkers
from engine.weight_loading import WeightLoading


class TorchModelRunner(TierCopies, WeightLoading, RunnerSleep):
    """The `engine.runner.ModelRunner` over a model folder. device: CUDA when available, else CPU;
    dtype: the checkpoint's on CUDA, float32 on CPU (see `default_dtype`); kv_cache_dtype: "auto" (the
    same) or an fp8 format (engine/config.py KV_CACHE_DTYPES), for the GPU's blocks and the host tier's, its
    scales measured on the first step with `calculate_kv_scales` (engine/model/kv_quant.py); quantization:
    "int8" or "fp8" W8A8 projections, or "int4" W4A16 ones, quantized while loading, else what a quantized checkpoint stores
    (engine/model/quant_config.py); tensor_parallel_size: N > 1 shards the model over N ranks, this one
    rank 0 and the rest processes it starts (engine/tp_workers.py), each with 1/N of the heads and of
    every KV block, so `num_blocks` and byte budgets are per rank; CPU ranks sum through shared memory
    unless `shared_memory_allreduce` is off (gloo then). `tp`: a worker's own rank. `num_disk_blocks`: slots
    of a disk tier in the folder `disk_kv_path`, one file a rank (engine/disk_store.py). `dequantize_mxfp4`:
    gpt-oss's MXFP4 experts dequantized at load rather than kept packed (engine/model/mxfp4.py)."""

    verifies_drafts = True  # samples after each draft token too (engine/speculation.py)

    def __init__(
        self,
        model_dir: str | Path,
        num_blocks: int,
        block_size: int,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        num_host_blocks: int = 0,
        kv_cache_dtype: str = "auto",
        calculate_kv_scales: bool = False,
        quantization: str | None = None,
        tensor_parallel_size: int = 1,
        tp: TPGroup | None = None,
        shared_memory_allreduce: bool = True,
        disk_kv_path: str | Path | None = None,
        num_disk_blocks: int = 0,
        dequantize_mxfp4: bool = False,
        hybrid_kv_cache: bool = True,
        num_state_slots: int = DEFAULT_STATE_SLOTS,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.full_config = full_config = ModelConfig.from_dir(self.model_dir)
        self.tensor_parallel_size = tp.size if tp is not None else tensor_parallel_size
        self.config = shard_config(full_config, self.tensor_parallel_size)  # this rank's heads and widths
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or default_dtype(full_config, self.device)
        element = fp8_format(kv_cache_dtype)
        self.kv_cache_dtype = kv_cache_dtype
        if calculate_kv_scales and element is None:
            raise ValueError("calculate_kv_scales measures an fp8 KV cache's scales: set kv_cache_dtype to fp8")
        self.kv_format = None if element is None else FP8KVFormat(element, self.dtype, calculate_kv_scales)
        if num_disk_blocks and (disk_kv_path is None or calculate_kv_scales):
            raise ValueError("a disk KV tier needs a folder (disk_kv_path)" if disk_kv_path is None else
                             "calculate_kv_scales measures new scales in every run, so KV an earlier run wrote "
                             "to disk would be read with other scales: use the checkpoint's scales with a disk tier")
        storage = self.dtype if element is None else torch.uint8
        self.kv_groups = runner_kv_groups(full_config, hybrid_kv_cache, self.tensor_parallel_size)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.eos_token_ids = read_eos_token_ids(self.model_dir, full_config)
        scheme = serving_scheme(self.model_dir, quantization)
        refuse_unsupported(full_config, kv_cache_dtype, self.tensor_parallel_size, scheme is not None)  # MLA's
        self.mamba_states = state_pool(full_config, num_state_slots, self.dtype, self.device, kv_cache_dtype,  # hybrids'
                                       self.tensor_parallel_size, scheme is not None, bool(num_host_blocks or num_disk_blocks))
        self.quantization = scheme.method if scheme is not None else None
        # gpt-oss's MXFP4 experts stay packed unless `dequantize_mxfp4` (engine/model/mxfp4.py)
        self.mxfp4_experts = is_mxfp4_checkpoint(self.model_dir) and not dequantize_mxfp4
        self.workers: TensorParallelWorkers | None = None
        if tp is None and self.tensor_parallel_size > 1:
            self.workers = TensorParallelWorkers(self.tensor_parallel_size, self.device, self.dtype, {
                "model_dir": self.model_dir, "num_blocks": num_blocks, "block_size": block_size, "dtype": self.dtype,
                "num_host_blocks": num_host_blocks, "kv_cache_dtype": kv_cache_dtype,
                "calculate_kv_scales": calculate_kv_scales, "quantization": quantization,
                "disk_kv_path": disk_kv_path, "num_disk_blocks": num_disk_blocks,
                "dequantize_mxfp4": dequantize_mxfp4},
                shared_memory=shared_memory_allreduce)
            try:
                tp = self.workers.join()
            except Exception:
                self.workers.close()
                raise
        self.tp = tp or SINGLE
        # A vision model's tower and projector (engine/model/vision.py); None: it takes text only. They stay
        # whole and unquantized, on rank 0 alone: its steps carry the image features to the other ranks.
        self.vision = VisionConfig.from_dict(json.loads((self.model_dir / "config.json").read_text()))
        self.image_features: ImageFeatures | None = None
        self.rope_positions = RopePositions(self.config, self.vision.merge_size if self.vision else 2)
        try:
            self.model = load_model(self.model_dir, self.device, self.dtype, self.config, scheme, self.tp,
                                    self.mxfp4_experts)
            if self.vision is not None and self.tp.rank == 0:
                encoder = load_vision_encoder(self.vision, safetensors_files(self.model_dir), self.device, self.dtype)
                self.image_features = ImageFeatures(encoder, self.device, self.dtype)
            if self.workers is not None:
                self.workers.wait_ready()
        except Exception:
            self.close()
            raise
        c = self.config
        planes, heads, values = c.kv_cache_entry  # K and V planes, or MLA's one latent (engine/model/mla.py)
        self.kv_cache = torch.zeros(  # with KV groups, a slot a layer of each group shares (engine/kv_groups.py)
            self.kv_groups.group_size if self.kv_groups else c.num_kv_layers, planes, num_blocks, block_size,
            heads, values, dtype=storage, device=self.device,
        )  # fmt: skip
        places = self.kv_groups.layer_places(c.num_layers) if self.kv_groups else None  # each layer's (group, slot)
        self._layer_slots = [slot for _, slot in places] if places else None
        self._layer_groups = [(g, self.kv_groups.slides[g]) for g, _ in places] if self.kv_groups and places else None
        # The host tier (engine/host_cache.py): page-locked on CUDA, so copies run at the link's speed.
        self.num_host_blocks = num_host_blocks
        self.host_kv = torch.zeros(  # a slot a block of the cache's: with KV groups, a group's layers
            self.kv_cache.shape[0], planes, num_host_blocks, block_size, heads, values,
            dtype=storage, pin_memory=self.device.type == "cuda" and num_host_blocks > 0,
        )  # fmt: skip
        self.num_disk_blocks = num_disk_blocks
        self.disk: DiskKVStore | None = None
        if num_disk_blocks:
            block_bytes = self.kv_cache[:, :, 0].numel() * self.kv_cache.element_size()
            try:
                self.disk = DiskKVStore(disk_kv_path, self.tp.rank, num_disk_blocks, block_bytes,  # type: ignore[arg-type]
                                        block_size, self.disk_fingerprint())
                self.disk.report_reads = self.tp.rank == 0
            except Exception:
                self.close()
                raise
        # LoRA adapters (engine/model/lora.py): the projections are wrapped when the first one is added.
        self.lora = LoRAStep()
        self._lora_wrapped = False
        self.sampler = Sampler()
        self.workspace = GatherWorkspace() if self.device.type == "cpu" else None
        self.step_logprobs: dict[int, TokenLogprobs] = {}  # the last step's, by sampled row (engine/runner.py)
        self.step_prompt_logprobs: dict[int, list[TokenLogprobs]] = {}  # by batch index (engine/runner.py)
        self.step_embeddings: dict[int, list[float]] = {}  # by batch index: SamplingParams.embed's vectors
        # Called with each step's batch and last hidden states (an EAGLE head's features: engine/eagle.py)
        self.hidden_states_listener: Callable[[ScheduledBatch, torch.Tensor], None] | None = None

    @property
    def max_model_len(self) -> int:
        return self.config.max_position_embeddings

    @property
    def attention_window(self) -> int | None:
        """The sliding window every layer attends to, where every layer slides (engine/block_manager.py)."""
        c = self.config
        return c.sliding_window if c.sliding_window and len(c.sliding_layers) == c.num_layers else None

    @property
    def hybrid_attention(self) -> HybridAttention | None:
        """Where some layers slide and the others read the whole context (Gemma 3): what steps are priced on."""
        c = self.config
        return hybrid_attention(c.sliding_window or 0, len(c.sliding_layers), c.num_layers)

    def close(self) -> None:
        """Finishes the disk tier's writes and closes its file, and stops a tensor-parallel runner's worker
        processes (each closing its own file first). Idempotent."""
        if self.workers is not None:
            self.workers.close()
        if getattr(self, "disk", None) is not None:
            self.disk.close()  # type: ignore[union-attr]

    @staticmethod
    def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype,
                           kv_cache_dtype: str = "auto", layers: int | None = None) -> int:
        return kv_bytes_per_block(config, block_size, dtype, kv_cache_dtype, layers)

    @classmethod
    def num_blocks_for_budget(
        cls,
        model_dir: str | Path,
        budget_bytes: int,
        block_size: int,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        kv_cache_dtype: str = "auto",
        tensor_parallel_size: int = 1,
        draft_dir: str | Path | None = None,
        hybrid_kv_cache: bool = True,
    ) -> int:
        """How many KV blocks fit in `budget_bytes` for this model (with the dtype the runner would use),
        per rank under tensor parallelism; with KV groups (a runner of `hybrid_kv_cache`), a block (and a host or
        disk tier's slot) holds a group's layers. With a draft model (`draft_dir`: engine/draft_model.py keeps as
        many blocks of its own, whole, on the first rank, in the target's dtype), a block is the target's
        and the draft's together, so both caches fit in the budget."""
        config = ModelConfig.from_dir(model_dir)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or default_dtype(config, device)
        groups = runner_kv_groups(config, hybrid_kv_cache, tensor_parallel_size)
        shard = shard_config(config, tensor_parallel_size)
        block_bytes = kv_bytes_per_block(shard, block_size, dtype, kv_cache_dtype, groups and groups.group_size)
        if draft_dir is not None:
            block_bytes += kv_bytes_per_block(ModelConfig.from_dir(draft_dir), block_size, dtype)
        return budget_bytes // block_bytes

    def load_lora(self, path: str | Path, max_rank: int) -> LoRAWeights:
        """An adapter folder's factors on this runner's device and dtype (engine/model/lora.py), for the
        whole model: `add_lora` gives each tensor-parallel rank its part."""
        refuse_hybrid_lora(self.full_config)
        return load_lora(path, self.full_config, max_rank, self.dtype, self.device)

    def add_lora(self, lora_id: int, weights: LoRAWeights) -> None:
        weights = weights_to(weights, self.device)  # from a worker's pipe, it arrives on the CPU
        if self.workers is not None:
            self.workers.send(("add_lora", lora_id, weights_to(weights, torch.device("cpu"))))
        if not self._lora_wrapped:  # a model never given an adapter runs its projections unwrapped
            wrap_projections(self.model, self.config, self.lora)
            self._lora_wrapped = True
        self.lora.adapters[lora_id] = shard_lora(weights, self.full_config, self.tp.rank, self.tp.size)

    def remove_lora(self, lora_id: int) -> None:
        if self.workers is not None:
            self.workers.send(("remove_lora", lora_id))
        self.lora.adapters.pop(lora_id, None)

    def run_shard(self, step: StepInputs) -> torch.Tensor | None:
        """Every rank's part of a step: the KV copies, then the forward pass (its hidden states)."""
        if step.kv_transfers:
            self.transfer_kv(step.kv_transfers)
        step = step.to(self.device)
        self.lora.groups = step.lora_groups
        if step.meta is None or step.input_ids is None or step.positions is None:
            return None
        with torch.inference_mode():
            plan = AttentionPlan.build(step.meta, self.config.sliding_window, self.workspace, self.kv_format,
                                       self._layer_groups, self.config.attention_chunk)
            caches = self.kv_cache if self._layer_slots is None else [self.kv_cache[s] for s in self._layer_slots]
            caches = caches if self.mamba_states is None else self.mamba_states.caches(self.kv_cache)
            if step.image_embeds is None:
                return self.model.hidden_states(step.input_ids, step.positions, caches, plan)
            with spliced_embeddings(self.model.model.layers, self.config.hidden_size, *step.image_embeds):
                return self.model.hidden_states(step.input_ids, step.positions, caches, plan)

    def execute(self, batch: ScheduledBatch) -> list[int]:
        self.step_prompt_logprobs, self.step_embeddings = {}, {}
        step, logits_index = StepInputs(batch.kv_transfers), None
        if len(batch):
            input_ids, positions, meta, logits_index, images = self._prepare(batch)
            if self.mamba_states is not None:  # state slots taken, given back, zeroed (engine/mamba_state.py)
                self.mamba_states.begin_step(batch)
            step = StepInputs(batch.kv_transfers, input_ids, positions, meta, self.lora.groups, images)
        if self.workers is not None:
            self.workers.send(step.to(torch.device("cpu")))
        hidden = self.run_shard(step)
        if hidden is not None and self.hidden_states_listener is not None:
            self.hidden_states_listener(batch, hidden)
        if hidden is None or logits_index is None:
            return []
        sampling = batch.sampling_indices
        with torch.inference_mode():
            scored = scored_prompt_positions(batch)
            if scored:
                self.step_prompt_logprobs = score_prompts(self.model.compute_logits, hidden, scored)
            if not sampling:
                return []
            if any(batch.seqs[i].params.embed for i in sampling):
                self.step_embeddings = self._embeddings(batch, hidden, logits_index)
            raw_logits = self.model.compute_logits(hidden[logits_index])
            rows, generated, drafts_after = sampled_rows(batch)
            logits = process_logits(raw_logits, rows, self.eos_token_ids)
            if any(s.grammar is not None for s in rows):
                logits = logits.clone() if logits is raw_logits else logits
                mask_disallowed(logits, [s.grammar for s in rows], drafts_after)
            forced = forced_rows(batch)
            if any(token is not None for token in forced):  # a thinking budget spent: its end tag
                logits = logits.clone() if logits is raw_logits else logits
                mask_to_forced(logits, forced)
            tokens = self.sampler(logits, [s.params for s in rows], generated, proposed_drafts(batch))
            wanted = [j for j, s in enumerate(rows) if s.params.logprobs is not None]
            self.step_logprobs = dict(zip(wanted, token_logprobs(
                raw_logits[wanted], [tokens[j] for j in wanted], [rows[j].params.logprobs or 0 for j in wanted]),
                strict=True)) if wanted else {}
            return tokens

    def _embeddings(self, batch: ScheduledBatch, hidden: torch.Tensor,
                    logits_index: torch.Tensor) -> dict[int, list[float]]:
        """Last-token pooling for the sequences that ask for an embedding: their last prompt token's hidden
        state through the model's `pool` (its final norm, L2-normalised; a classifier's label logits). They
        carry no drafts: their one row is their sample."""
        wanted, rows, row = [], [], 0
        for i in batch.sampling_indices:
            if batch.seqs[i].params.embed:
                wanted.append(i)
                rows.append(row)
            row += 1 + len(batch.draft_token_ids[i])
        vectors = self.model.pool(hidden[logits_index[torch.tensor(rows, device=hidden.device)]]).cpu().tolist()
        return dict(zip(wanted, vectors, strict=True))

    def _prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor,
                                                       tuple[torch.Tensor, torch.Tensor] | None]:
        block_size = self.block_size
        image_spans: list[Span] = []  # the prompt tokens of sequences with images this step computes
        embed_spans: list[Span] = []  # and of sequences sent as prompt embeddings (engine/prompt_embeds.py)
        lens = batch.num_new_tokens
        token_ids: list[int] = []
        positions: list[int] = []
        seq_of_token: list[int] = []
        tables: list[list[list[int]]] = []  # each sequence's, a table for each KV group
        num_groups = self.kv_groups.num_groups if self.kv_groups else 1
        context_lens: list[int] = []
        lora_rows: dict[int, list[int]] = {}
        bidirectional: list[list[tuple[int, int]]] = []  # each sequence's Gemma 3 images this step
        for i, (seq, n, drafts) in enumerate(zip(batch.seqs, lens, batch.draft_token_ids, strict=True)):
            if seq.lora_id:
                lora_rows.setdefault(seq.lora_id, []).extend(range(len(token_ids), len(token_ids) + n))
            start = seq.num_computed_tokens
            end = start + n
            if end > self.max_model_len:
                raise ValueError(f"{seq.request_id}: context {end} exceeds max_model_len {self.max_model_len}")
            needed = -(-end // block_size)
            if len(seq.block_table) < needed or len(seq.block_tables) != num_groups:
                raise ValueError(f"{seq.request_id}: {needed} blocks needed in each of {num_groups} KV groups, "
                                 f"block tables have {[len(t) for t in seq.block_tables]}")
            if seq.images:
                image_spans.append((seq, len(token_ids), start, end - len(drafts)))
            if seq.prompt_embeds is not None:
                embed_spans.append((seq, len(token_ids), start, end - len(drafts)))
            bidirectional.append(bidirectional_spans(seq.images, start, end))
            token_ids.extend(seq.token_ids[start: end - len(drafts)])
            token_ids.extend(drafts)
            positions.extend(range(start, end))
            seq_of_token.extend([i] * n)
            tables.append([table[:needed] for table in seq.block_tables])
            context_lens.append(end)
        positions_t = torch.tensor(positions)
        rope_positions = self.rope_positions.step(batch.seqs, lens, positions_t)  # LongRoPE's, M-RoPE's
        slots, block_tables = step_tables(tables, torch.tensor(seq_of_token), positions_t, block_size)
        query_ends = list(accumulate(lens))
        query_starts = [end - n for end, n in zip(query_ends, lens, strict=True)]
        logits_index = [row for i in batch.sampling_indices
                        for row in range(query_ends[i] - 1 - len(batch.draft_token_ids[i]), query_ends[i])]
        to = self.device
        # Each adapter's rows of the step; all of them when one adapter has the whole batch.
        self.lora.groups = [(lora_id, None if len(rows) == len(token_ids) else torch.tensor(rows, device=to))
                            for lora_id, rows in lora_rows.items()]
        meta = AttentionMetadata(
            slot_mapping=slots[0].to(to),
            block_tables=block_tables[0].to(to),
            query_starts=query_starts,
            query_lens=list(lens),
            context_lens=context_lens,
            block_size=block_size,
            image_spans=bidirectional if any(bidirectional) else None,
            group_tables=(slots.to(to), block_tables.to(to)) if num_groups > 1 else None,
        )
        images = self.image_features.step_embeds(image_spans) if image_spans and self.image_features else None
        images = with_step_rows(images, embed_spans, to)
        return (torch.tensor(token_ids).to(to), rope_positions.to(to), meta,
                torch.tensor(logits_index, dtype=torch.long).to(to), images)


def default_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    """Checkpoint dtype on accelerators; float32 on CPU, where bf16/fp16 matmuls are slow or missing."""
    if device.type == "cpu":
        return torch.float32
    return getattr(torch, config.torch_dtype, torch.bfloat16)

