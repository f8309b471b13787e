"""The engine's side of the disk KV tier (engine/disk_cache.py decides, the runner's engine/disk_store.py
writes and reads): what happens between the table and the runner around each step and at the ends.

At start the table takes over the blocks an earlier engine left in the folder, those every rank's file
confirms. Before each step it learns which slots the runner has read ahead, and writes the index every
`disk_index_interval_s` of engine time (by each rank's writer thread, after the writes queued before it:
a crash loses at most what changed since). After the step is scheduled it asks the runner to read ahead
what waiting requests need. At a clean close, the blocks the GPU and the host tier still cache are written
to disk first (the most recent ones, as many as the disk holds), so a prompt served before a restart hits
there after it; after a crash, only the index of what is on disk: a step that failed may have left blocks
published whose KV was never computed."""

from __future__ import annotations

from engine.batch import ScheduledBatch
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.runner import ModelRunner


class DiskTier:
    def __init__(self, block_manager: BlockManager, runner: ModelRunner, config: EngineConfig, now: float) -> None:
        assert block_manager.disk is not None
        self.block_manager, self.table, self.runner = block_manager, block_manager.disk, runner
        self.interval_s = config.disk_index_interval_s
        self.table.restore(runner.disk_entries())  # type: ignore[attr-defined]
        if config.disk_read_ahead:  # as many blocks as the runner gives memory to
            self.table.read_ahead_blocks = getattr(runner, "disk_read_ahead_blocks", 0)
        self.next_index_at = now + self.interval_s
        self.closed = False

    def before_step(self, now: float) -> None:
        self.table.mark_read(self.runner.read_ahead_done())  # type: ignore[attr-defined]
        if now >= self.next_index_at:
            self.runner.persist_disk(self.table.entries())  # type: ignore[attr-defined]
            self.next_index_at = now + self.interval_s

    def after_schedule(self) -> None:
        reads, drops = self.table.take_read_requests()
        if reads or drops:
            self.runner.read_ahead(reads, drops)  # type: ignore[attr-defined]

    def next_read_done(self) -> float | None:
        """When a read ahead is next done, where the runner knows (a simulated one): a request may then start."""
        next_done = getattr(self.runner, "next_read_ahead_done", None)
        return next_done() if next_done is not None else None

    def close(self, clean: bool = True) -> None:
        """Write what is worth keeping and the index, and wait for it (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if clean:
            transfers = self.block_manager.plan_disk_flush()
            if transfers:  # performed as a step's copies are: on every rank, priced by a simulated runner
                self.runner.execute(ScheduledBatch(kv_transfers=transfers, block_size=self.block_manager.block_size))
        self.runner.persist_disk(self.table.entries())  # type: ignore[attr-defined]
        self.runner.flush_disk()  # type: ignore[attr-defined]
