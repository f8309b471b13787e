"""WhisperModelRunner: the ModelRunner (engine/runner.py) for a Whisper folder (engine/model/whisper.py). The engine's
scheduler, block manager and sampler run it as they run a decoder: each sequence is a request's decoder tokens
(<|startoftranscript|><|lang|><|task|><|notimestamps|>, after <|startofprev|> and the prompt's tokens where
given), its self-attention K/V in the paged cache. What is Whisper's own: a step first runs the encoder (in
batches on a GPU, a window at a time on a CPU) on the windows of the sequences it sees for the first time (engine/audio_inputs.py keeps each window's
cross-attention K/V with the request), and masks the generation config's `suppress_tokens` at every sampled row and
its `begin_suppress_tokens` at a transcript's first, as transformers' `generate` does.

No host or disk KV tier, tensor parallelism, LoRA, quantization or speculative decoding here: engine/build.py
refuses them for a Whisper folder."""

from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path

import torch

from engine.audio_inputs import AudioInput
from engine.batch import ScheduledBatch
from engine.kv_layout import step_tables
from engine.logprobs import TokenLogprobs, token_logprobs
from engine.model.attention import AttentionMetadata, AttentionPlan, GatherWorkspace
from engine.model.logits_processors import process_logits
from engine.model.sampler import Sampler
from engine.model.whisper import CrossPlan, WhisperConfig, load_whisper
from engine.sequence import Sequence
from engine.step_rows import proposed_drafts, sampled_rows


class WhisperModelRunner:
    verifies_drafts = False
    takes_audio = True  # requests bring an AudioInput; text-only requests are refused (engine/llm_engine.py)

    def __init__(self, model_dir: str | Path, num_blocks: int, block_size: int,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.config = config = WhisperConfig.from_dir(self.model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float32 if self.device.type == "cpu" else
                               getattr(torch, config.torch_dtype, torch.float16))
        self.model = load_whisper(self.model_dir, self.device, self.dtype)
        generation = _read_json(self.model_dir / "generation_config.json")
        eos = generation.get("eos_token_id")
        self.eos_token_ids: tuple[int, ...] = config.eos_token_ids if eos is None else (
            (eos,) if isinstance(eos, int) else tuple(eos))
        self.generation_config = generation
        self.suppress_tokens = torch.tensor(generation.get("suppress_tokens") or [], dtype=torch.long)
        self.begin_suppress_tokens = torch.tensor(generation.get("begin_suppress_tokens") or [], dtype=torch.long)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.kv_cache = torch.zeros(config.decoder_layers, 2, num_blocks, block_size, config.decoder_heads,
                                    config.head_dim, dtype=self.dtype, device=self.device)
        self.sampler = Sampler()
        self.workspace = GatherWorkspace() if self.device.type == "cpu" else None
        self.step_logprobs: dict[int, TokenLogprobs] = {}
        self.step_prompt_logprobs: dict[int, list[TokenLogprobs]] = {}
        self.step_embeddings: dict[int, list[float]] = {}
        # The decode rows' cross-attention K/V stacked for one attention call a layer, kept while the same
        # requests decode together (most steps): (their windows, each layer's stacked K and V).
        # Keyed by the AudioInputs themselves, not their ids: held here, none is freed and its id reused.
        self._stacked: tuple[tuple[AudioInput, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        self.encoder_windows = 0  # windows encoded so far (bench/whisper.py reads it)
        # Windows an encoder call takes: one on a CPU, where 8 at once took longer than 8 one by one
        # (bench/whisper.py: each window's attention scores are 1,500 x 1,500 a head, too large for the caches).
        self.encoder_batch = 1 if self.device.type == "cpu" else 16

    @property
    def max_model_len(self) -> int:
        return self.config.max_target_positions

    @staticmethod
    def kv_bytes_per_block(config: WhisperConfig, block_size: int, dtype: torch.dtype) -> int:
        return 2 * config.decoder_layers * block_size * config.d_model * dtype.itemsize

    @classmethod
    def num_blocks_for_budget(cls, model_dir: str | Path, budget_bytes: int, block_size: int,
                              device: str | torch.device | None = None) -> int:
        on_gpu = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type != "cpu"
        return budget_bytes // cls.kv_bytes_per_block(WhisperConfig.from_dir(model_dir), block_size,
                                                       torch.float16 if on_gpu else torch.float32)

    def encode(self, audios: list[AudioInput]) -> None:
        """Runs the encoder on the windows not encoded yet (`encoder_batch` at a time); each keeps its K/V."""
        pending = list({id(a): a for a in audios if a.cross_kv is None}.values())
        if not pending:
            return
        for start in range(0, len(pending), self.encoder_batch):
            chunk = pending[start:start + self.encoder_batch]
            features = torch.stack([a.features for a in chunk]).to(self.device, self.dtype)
            with torch.inference_mode():
                for audio, kv in zip(chunk, self.model.encode(features), strict=True):
                    audio.cross_kv = kv
        self.encoder_windows += len(pending)

    def execute(self, batch: ScheduledBatch) -> list[int]:
        self.step_prompt_logprobs, self.step_embeddings = {}, {}
        if not len(batch):
            return []
        if batch.kv_transfers:
            raise ValueError("a Whisper runner has no host or disk KV tier")
        audios = [_audio_of(seq) for seq in batch.seqs]
        self.encode(audios)
        input_ids, positions, meta, logits_index = self._prepare(batch)
        with torch.inference_mode():
            plan = AttentionPlan.build(meta, None, self.workspace)
            cross = self._cross_plan(batch, audios, meta)
            hidden = self.model.model.decoder(input_ids, positions, self.kv_cache, plan, cross)
            if not batch.sampling_indices:
                return []
            raw_logits = self.model.compute_logits(hidden[logits_index]).float()
            rows, generated, _ = sampled_rows(batch)
            raw_logits = self._suppressed(raw_logits, generated)
            logits = process_logits(raw_logits, rows, self.eos_token_ids)
            tokens = self.sampler(logits, [s.params for s in rows], generated, proposed_drafts(batch))
            wanted = [j for j, s in enumerate(rows) if s.params.logprobs is not None]
            self.step_logprobs = dict(zip(wanted, token_logprobs(
                raw_logits[wanted], [tokens[j] for j in wanted], [rows[j].params.logprobs or 0 for j in wanted]),
                strict=True)) if wanted else {}
            return tokens

    def _suppressed(self, logits: torch.Tensor, generated: list[int]) -> torch.Tensor:
        """transformers' SuppressTokensLogitsProcessor on every row, SuppressTokensAtBeginLogitsProcessor on rows
        sampling a transcript's first token (a language detection's one token is held to the languages anyway)."""
        if len(self.suppress_tokens):
            logits[:, self.suppress_tokens.to(logits.device)] = -torch.inf
        first = [j for j, n in enumerate(generated) if n == 0]
        if first and len(self.begin_suppress_tokens):
            rows = torch.tensor(first, device=logits.device)
            logits[rows[:, None], self.begin_suppress_tokens.to(logits.device)[None, :]] = -torch.inf
        return logits

    def _cross_plan(self, batch: ScheduledBatch, audios: list[AudioInput], meta: AttentionMetadata) -> CrossPlan:
        decode = [i for i, n in enumerate(meta.query_lens) if n == 1]
        if not decode:
            self._stacked = None  # nothing decodes: the last batch's K/V are not held past its requests
        key = tuple(audios[i] for i in decode)
        if decode and (self._stacked is None or len(self._stacked[0]) != len(key)
                       or any(a is not b for a, b in zip(self._stacked[0], key, strict=True))):
            layers = range(self.config.decoder_layers)
            stacked = [tuple(torch.stack([audios[i].cross_kv[layer][kv] for i in decode])  # type: ignore[index]
                             for kv in (0, 1)) for layer in layers]
            self._stacked = (key, stacked)  # type: ignore[assignment]
        prefills = [(meta.query_starts[i], meta.query_starts[i] + n, audios[i].cross_kv)
                    for i, n in enumerate(meta.query_lens) if n > 1]
        return CrossPlan(
            decode_index=torch.tensor([meta.query_starts[i] for i in decode], device=self.device) if decode else None,
            decode_kv=self._stacked[1] if decode and self._stacked is not None else None,
            prefills=prefills)  # type: ignore[arg-type]

    def _prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        lens = batch.num_new_tokens
        token_ids: list[int] = []
        positions: list[int] = []
        seq_of_token: list[int] = []
        tables: list[list[list[int]]] = []
        context_lens: list[int] = []
        for i, (seq, n) in enumerate(zip(batch.seqs, lens, strict=True)):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            if end > self.max_model_len:
                raise ValueError(f"{seq.request_id}: context {end} exceeds max_model_len {self.max_model_len}")
            needed = -(-end // self.block_size)
            if len(seq.block_table) < needed:
                raise ValueError(f"{seq.request_id}: {needed} blocks needed, the block table has {len(seq.block_table)}")
            token_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            seq_of_token.extend([i] * n)
            tables.append([seq.block_table[:needed]])
            context_lens.append(end)
        positions_t = torch.tensor(positions)
        slots, block_tables = step_tables(tables, torch.tensor(seq_of_token), positions_t, self.block_size)
        query_ends = list(accumulate(lens))
        to = self.device
        meta = AttentionMetadata(slot_mapping=slots[0].to(to), block_tables=block_tables[0].to(to),
                                 query_starts=[end - n for end, n in zip(query_ends, lens, strict=True)],
                                 query_lens=list(lens), context_lens=context_lens, block_size=self.block_size)
        logits_index = torch.tensor([query_ends[i] - 1 for i in batch.sampling_indices], dtype=torch.long)
        return torch.tensor(token_ids).to(to), positions_t.to(to), meta, logits_index.to(to)


def _audio_of(seq: Sequence) -> AudioInput:
    audio = getattr(seq, "audio", None)
    if audio is None:
        raise ValueError(f"{seq.request_id}: a Whisper model's request needs its audio")
    return audio


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def whisper_runner(model_dir: str | Path, num_blocks: int | None, kv_cache_memory_bytes: int | None, block_size: int,
                   device: str | None, unsupported: dict[str, bool]) -> WhisperModelRunner:
    """engine/build.py's runner for a Whisper folder: its KV cache sized as a decoder's (1024 blocks unless told),
    the options it does not serve (`unsupported`: each option's name and whether it was set) refused by name."""
    refused = sorted(name for name, given in unsupported.items() if given)
    if refused:
        raise ValueError(f"a Whisper model is served without {', '.join(refused)}")
    if num_blocks is None:
        num_blocks = 1024 if kv_cache_memory_bytes is None else WhisperModelRunner.num_blocks_for_budget(
            model_dir, kv_cache_memory_bytes, block_size, device)
    if num_blocks < 1:
        raise ValueError(f"the KV cache must hold at least one block (got {num_blocks})")
    return WhisperModelRunner(model_dir, num_blocks, block_size, device=device)
