"""A model runner that computes nothing: each step advances a clock by the modelled step time.

Under a VirtualClock the engine runs at GPU scale on a CPU (see `engine.simulate`); under a
WallClock it sleeps the modelled time, a stand-in GPU for serving tests.

What it "writes" is fixed by output index: a request's script (real outputs replayed, as the model
whose greedy answers they are would write them) or deterministic placeholder tokens. Draft tokens
(speculative decoding) are checked against that, as a real model checks them against its own
samples, so a replay of real text accepts the drafts real decoding would."""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterator
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

from engine.batch import ScheduledBatch, StepShape
from engine.clock import Clock
from engine.disk_cache import DEFAULT_READ_AHEAD_BYTES, DiskEntry
from engine.disk_index import python_hash_fingerprint
from engine.disk_store import DiskKVStore
from engine.hybrid_attention import hybrid_attention
from engine.sequence import Sequence
from engine.step_time import StepTimeModel

_MIX = 0x9E3779B1  # Knuth's multiplicative hash constant: spreads consecutive positions apart


class SimulatedRunner:
    verifies_drafts = True  # its token at an output index does not depend on the drafts before it

    def __init__(self, step_time: StepTimeModel, clock: Clock, vocab_size: int = 32000,
                 eos_token_ids: tuple[int, ...] | list[int] = (), num_host_blocks: int = 0,
                 kv_cache_dtype: str = "auto", num_disk_blocks: int = 0, disk_kv_path: str | Path | None = None,
                 block_size: int = 16) -> None:
        if num_host_blocks and not getattr(step_time, "prices_kv_transfers", False):
            raise ValueError("this step-time profile does not price host KV copies (made before the host tier): "
                             "run `pitstop engine profile` again, or use a roofline profile")
        if num_disk_blocks and not getattr(step_time, "prices_disk_reads", False):
            raise ValueError("this step-time profile does not price disk KV reads (made before the disk tier): "
                             "run `pitstop engine profile` again, or use a roofline profile")
        self.num_host_blocks = num_host_blocks  # a host tier's copies are priced, not performed
        # A disk tier's too; with a folder, its index is kept there as the torch runner keeps it (no data).
        self.num_disk_blocks = num_disk_blocks
        self.disk = None if not (num_disk_blocks and disk_kv_path) else DiskKVStore(
            disk_kv_path, 0, num_disk_blocks, 0, block_size,
            {"sim": step_time.to_json(), "kv_cache_dtype": kv_cache_dtype, "block_size": block_size,
             "python": python_hash_fingerprint()})
        # Disk reads ahead (engine/disk_cache.py) queue on one drive, each block at the modelled read time.
        empty = StepShape(0, 0, 0, 0, 0)
        self._block_read_s = step_time.predict(StepShape(0, 0, 0, 0, 0, disk_tokens_read=block_size)) \
            - step_time.predict(empty) if num_disk_blocks else 0.0
        kv_per_token = model_kv_bytes_per_token(step_time)
        self.disk_read_ahead_blocks = DEFAULT_READ_AHEAD_BYTES // (kv_per_token * block_size) if kv_per_token else 0
        self._drive_free_at = 0.0
        self._reads: list[tuple[float, list[int]]] = []  # (done at, slots), a heap
        self._read_at: dict[int, float] = {}  # slot -> when its latest read is done
        self.kv_cache_dtype = kv_cache_dtype  # reported; `step_time` prices it (engine/build.py)
        # The modelled model (a roofline's ModelShape, or its fields in a fitted profile). One whose every layer
        # slides: the engine releases the blocks that slid out. One whose other layers read the whole context
        # (Gemma 3, `num_full_layers`) keeps them all; its steps are priced on the keys each layer reads.
        shape = getattr(step_time, "model", None)
        info = shape if isinstance(shape, dict) else asdict(shape) if is_dataclass(shape) else {}
        window, full, layers = info.get("sliding_window") or 0, info.get("num_full_layers") or 0, info.get("num_layers", 0)
        self.attention_window: int | None = None if full else window or None
        self.hybrid_attention = hybrid_attention(window, layers - full, layers) if full else None
        # The modelled engine's W8A8 or W4A16 projections, which `step_time` prices (engine/build.py): reported.
        self.quantization: str | None = info.get("quantization")
        self.step_time = step_time
        self.clock = clock
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self._eos = frozenset(self.eos_token_ids)
        assert len(self._eos) < vocab_size, "every token id cannot be an EOS id"
        self._salts: dict[str, int] = {}  # request id -> its crc32, hashed once per request
        self._scripts: dict[str, list[int]] = {}  # request id -> the output tokens it replays

    def disk_entries(self) -> list[DiskEntry]:
        return self.disk.entries if self.disk is not None else []

    def persist_disk(self, entries: list[DiskEntry]) -> None:
        if self.disk is not None:
            self.disk.persist(entries)

    def flush_disk(self) -> None:
        if self.disk is not None:
            self.disk.flush()

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()

    def read_ahead(self, slots: list[int], drops: list[int]) -> None:
        """The slots queue on the drive; they are reported read together, when the last is (a request
        waits for all of its slots anyway, and one report saves a simulation a wake-up per block)."""
        for slot in drops:
            self._read_at.pop(slot, None)
        if not slots:
            return
        self._drive_free_at = max(self.clock.now(), self._drive_free_at) + len(slots) * self._block_read_s
        for slot in slots:
            self._read_at[slot] = self._drive_free_at
        heapq.heappush(self._reads, (self._drive_free_at, slots))

    def read_ahead_done(self) -> list[int]:
        done, now = [], self.clock.now()
        while self._reads and self._reads[0][0] <= now:
            at, slots = heapq.heappop(self._reads)
            for slot in slots:
                if self._read_at.get(slot) == at:
                    del self._read_at[slot]
                    done.append(slot)
        return done

    def next_read_ahead_done(self) -> float | None:
        """When the next reads ahead are done: an event a simulation must not step past."""
        return self._reads[0][0] if self._reads else None

    def script(self, request_id: str, output_token_ids: list[int]) -> None:
        """Make `request_id` write these tokens, in order (placeholders after them); `forget` it when
        it finishes. An EOS id among them ends the request there, as a model's would."""
        self._scripts[request_id] = output_token_ids

    def forget(self, request_id: str) -> None:
        self._scripts.pop(request_id, None)

    def _salt(self, request_id: str) -> int:
        salt = self._salts.get(request_id)
        if salt is None:
            if len(self._salts) >= 1 << 16:  # finished requests linger here; forget them all at times
                self._salts.clear()
            salt = self._salts[request_id] = zlib.crc32(request_id.encode())
        return salt

    def _token_at(self, seq: Sequence, position: int) -> int:
        script = self._scripts.get(seq.request_id)
        index = position - seq.num_prompt_tokens
        if script is not None and index < len(script):
            return script[index]
        return self.placeholder_token(seq.request_id, position)

    def execute(self, batch: ScheduledBatch) -> list[int]:
        self.clock.advance(self.step_time.predict(batch.shape))
        if self._scripts or batch.has_drafts:
            return self._scripted(batch)
        # batch.samples(i) and placeholder_token inlined into one comprehension: this is the
        # simulation's hot path, run once per sequence per step.
        salts, salt, vocab = self._salts, self._salt, self.vocab_size
        tokens = [((salts.get(seq.request_id) or salt(seq.request_id)) ^ position * _MIX) % vocab
                  for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True)
                  if (position := seq.num_computed_tokens + num_new) == len(seq.token_ids)]
        if self._eos and not self._eos.isdisjoint(tokens):
            tokens = [self._not_eos(t) for t in tokens]
        return tokens

    def _scripted(self, batch: ScheduledBatch) -> list[int]:
        """The general path: scripts, and a sample after the last token and after each draft."""
        tokens = []
        for seq, num_new, drafts in zip(batch.seqs, batch.num_new_tokens, batch.draft_token_ids, strict=True):
            position = seq.num_computed_tokens + num_new - len(drafts)
            if position == len(seq.token_ids):
                tokens += [self._token_at(seq, position + k) for k in range(len(drafts) + 1)]
        return tokens

    def _decode_step_times(self, batch: ScheduledBatch, max_steps: int) -> Iterator[float]:
        shape = batch.shape  # a pure-decode batch: each step's KV grows by one token per sequence
        seqs, kv, predict = shape.decode_seqs, shape.kv_tokens, self.step_time.predict
        hybrid = batch.hybrid_attention  # its sliding layers read no more once a context passes their window
        for step in range(max_steps):  # the first step performs the batch's host and disk copies
            step_kv = (kv + step * seqs if hybrid is None
                       else sum(hybrid.read_tokens(seq.num_computed_tokens + 1 + step, 1) for seq in batch.seqs))
            yield predict(StepShape(0, 0, seqs, step_kv, 0, 0, 0 if step else shape.kv_tokens_moved,
                                    0 if step else shape.disk_tokens_read))

    def plan_decode_steps(self, batch: ScheduledBatch, max_steps: int, horizon: float) -> int:
        """How many of up to `max_steps` fused decode steps start before `horizon` (see
        engine/fused_decode.py); the first always runs."""
        start, steps = self.clock.now(), 0
        for duration in self._decode_step_times(batch, max_steps):
            steps += 1
            start += duration
            if start >= horizon:
                break
        return steps

    def execute_decode_steps(self, batch: ScheduledBatch, steps: int) -> list[list[int]]:
        self.clock.advance(sum(self._decode_step_times(batch, steps)))
        vocab, out = self.vocab_size, []
        for seq in batch.seqs:
            salt, first = self._salt(seq.request_id), len(seq.token_ids)
            if seq.request_id in self._scripts:
                out.append([self._token_at(seq, position) for position in range(first, first + steps)])
                continue
            tokens = [(salt ^ position * _MIX) % vocab for position in range(first, first + steps)]
            out.append([self._not_eos(t) for t in tokens] if self._eos else tokens)
        return out

    def _not_eos(self, token: int) -> int:
        while token in self._eos:
            token = (token + 1) % self.vocab_size
        return token

    def placeholder_token(self, request_id: str, position: int) -> int:
        """Deterministic per (request, position) across runs and processes, and never an EOS id,
        so a request runs to its max_tokens (workloads set that to the true output length)."""
        return self._not_eos((self._salt(request_id) ^ position * _MIX) % self.vocab_size)


def model_kv_bytes_per_token(step_time: StepTimeModel) -> int | None:
    """A token's KV in bytes for the modelled model: a roofline's model shape, or the one a linear profile
    recorded (`pitstop engine profile` writes its ModelShape's fields); None where it is not known."""
    from engine.roofline import ModelShape

    model = getattr(step_time, "model", None)
    if isinstance(model, dict):
        names = {f.name for f in fields(ModelShape)}
        try:
            model = ModelShape(**{k: v for k, v in model.items() if k in names})
        except TypeError:  # a profile of a runner without a model shape (a fake, a test's)
            return None
    return getattr(model, "kv_bytes_per_token", None)
