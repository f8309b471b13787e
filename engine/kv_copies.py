"""The torch runner's copies between its KV cache and the tiers behind it (its base class): the host
tier's page-locked blocks and the disk tier's file (engine/disk_store.py), on every tensor-parallel rank
(rank 0 forwards what every rank does to the others: engine/tp_workers.py)."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import torch

from engine.disk_cache import DEFAULT_READ_AHEAD_BYTES, DiskEntry
from engine.disk_index import model_files_digest, python_hash_fingerprint
from engine.disk_store import DiskKVStore
from engine.kv_groups import KVGroupLayout
from engine.kv_transfer import HOST, HOST_TO_DISK, KVTransfer
from engine.model.config import ModelConfig
from engine.model.parallel import TPGroup
from engine.tp_workers import TensorParallelWorkers


class TierCopies:
    """Needs the runner's device, caches, disk store, workers and model description."""

    device: torch.device
    dtype: torch.dtype
    kv_cache: torch.Tensor  # [layers, 2, blocks, block_size, kv_heads, head_dim]
    host_kv: torch.Tensor  # the same, host slots for blocks
    disk: DiskKVStore | None
    workers: TensorParallelWorkers | None
    config: ModelConfig  # this rank's shard
    model_dir: Path
    block_size: int
    tp: TPGroup
    tensor_parallel_size: int
    kv_cache_dtype: str
    quantization: str | None
    kv_groups: KVGroupLayout | None  # a slot then holds one group's layers (engine/group_tiers.py)

    def transfer_kv(self, transfers: list[KVTransfer]) -> None:
        """Copy blocks between the KV cache, the host tier and the disk tier, in order: a run of copies of
        one kind is one gather and one scatter (a step's copies never read a slot or block an earlier one
        of the run wrote). A disk write takes a copy of its blocks and goes on behind the step."""
        for (tier, save), run in groupby(transfers, key=lambda t: (t.tier, t.save)):
            moves = list(run)
            sources = torch.tensor([t.block_id for t in moves], device=self.device if tier != HOST_TO_DISK else None)
            slots = [t.slot for t in moves]
            if tier == HOST and save:
                self.host_kv.index_copy_(2, torch.tensor(slots), self.kv_cache.index_select(2, sources).to("cpu"))
            elif tier == HOST:
                loaded = self.host_kv.index_select(2, torch.tensor(slots)).to(self.device, non_blocking=True)
                self.kv_cache.index_copy_(2, sources, loaded)
            elif save:  # to disk, from GPU blocks or (HOST_TO_DISK) from host slots
                blocks = (self.host_kv if tier == HOST_TO_DISK else self.kv_cache).index_select(2, sources)
                rows = blocks.movedim(2, 0).contiguous().to("cpu")  # a slot's layout: [layers, 2, block, heads, dim]
                assert self.disk is not None
                self.disk.write(slots, [t.block_hash for t in moves], rows.view(torch.uint8).reshape(len(moves), -1).numpy())
            else:
                assert self.disk is not None
                rows = torch.from_numpy(self.disk.read(slots)).view(self.kv_cache.dtype)
                rows = rows.view(len(moves), *self.kv_cache.shape[:2], *self.kv_cache.shape[3:])
                self.kv_cache.index_copy_(2, sources, rows.movedim(0, 2).to(self.device))

    def disk_fingerprint(self) -> dict:
        """What KV this rank's disk file holds is only good for (engine/disk_index.py)."""
        c = self.config
        return {"model": model_files_digest(self.model_dir), "dtype": str(self.dtype),
                "kv_cache_dtype": self.kv_cache_dtype, "quantization": self.quantization,
                "block": [c.num_layers, c.kv_cache_entry[0], self.block_size, *c.kv_cache_entry[1:]],
                "tensor_parallel": [self.tp.rank, self.tensor_parallel_size], "python": python_hash_fingerprint(),
                # KV groups' slots hold a group's layers: files of whole-model blocks (or other groups) are refused
                **({"kv_groups": [list(g) for g in self.kv_groups.groups]} if self.kv_groups else {})}

    def disk_entries(self) -> list[DiskEntry]:
        """The blocks an earlier engine left that every rank's file holds (what the disk table starts from)."""
        assert self.disk is not None
        entries = self.disk.entries
        for theirs in self.workers.call("disk_entries") if self.workers is not None else []:
            held = {(e.slot, e.block_hash) for e in theirs}
            entries = [e for e in entries if (e.slot, e.block_hash) in held]
        return entries

    def persist_disk(self, entries: list[DiskEntry]) -> None:
        """Every rank writes its index of `entries` once its queued writes are done."""
        if self.workers is not None:
            self.workers.send(("persist_disk", entries))
        if self.disk is not None:
            self.disk.persist(entries)

    @property
    def disk_read_ahead_blocks(self) -> int:
        """Blocks this runner reads ahead from disk at most (engine/disk_cache.py): a memory budget."""
        return DEFAULT_READ_AHEAD_BYTES // self.disk.block_bytes if self.disk is not None else 0

    def read_ahead(self, slots: list[int], drops: list[int]) -> None:
        """Every rank reads `slots` of its file into memory behind the step, and frees what it read of `drops`."""
        if self.workers is not None:
            self.workers.send(("read_ahead", slots, drops))
        if self.disk is not None:
            self.disk.read_ahead(slots, drops)

    def read_ahead_done(self) -> list[int]:
        """Slots read ahead since the last call (rank 0's: the others read theirs at about the same pace, and
        a load whose read is not done on a rank reads the file there)."""
        return self.disk.take_read_ahead_done() if self.disk is not None else []

    def flush_disk(self) -> None:
        """Waits until every rank's queued disk writes (and index) are done."""
        if self.workers is not None:
            self.workers.call("flush_disk")
        if self.disk is not None:
            self.disk.flush()

