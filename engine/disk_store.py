"""One rank's disk KV tier files, and the thread that writes them (engine/disk_cache.py decides what).

In the tier's folder, for tensor-parallel rank r (each rank holds its part of every block, so its own file):

    kv-rank{r}.bin     the slots, preallocated: each a KV block as the cache holds it ([layers, 2, block_size,
                       kv_heads, head_dim] in the cache's storage dtype, fp8 bytes included)
    kv-rank{r}.slots   one int64 a slot: the chain hash of the block whose write there completed, 0 while
                       none (set to 0, and synced, before a slot is overwritten)
    kv-rank{r}.index   which block each slot holds and their recency (engine/disk_index.py)
    kv-rank{r}.lock    held while an engine uses the folder

Writes run behind the step on a writer thread, at most `max_pending_bytes` queued (past that a write
waits: `stalled_s` says how long in all); a read of a slot whose write is still queued takes the queued
bytes. The same thread reads slots ahead into memory when asked (engine/disk_cache.py), in order with the
writes: a load takes the newest of a queued write, a read ahead, the file. The index is written by the same thread, after every write queued before it, and lists only the
entries whose write is recorded in `.slots`: a block whose data write did not complete is never indexed.
A new store takes over only the index entries its `.slots` confirms, so a slot reused after the last index
was written is not trusted. An index of another fingerprint, or a damaged one, is dropped with a warning
and the folder starts empty."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.disk_cache import DiskEntry
from engine.disk_index import IndexUnusable, read_index, write_index

log = logging.getLogger("pitstop.engine")
DEFAULT_MAX_PENDING_BYTES = 256 << 20
_RUN_BYTES = 64 << 20  # one read or write call at most (Linux moves at most ~2 GiB a call)


@dataclass
class _Write:
    seq: int
    slots: list[int]
    hashes: list[int]
    data: np.ndarray  # [len(slots), block_bytes] uint8, the store's own copy


@dataclass
class _Index:
    entries: list[DiskEntry]


@dataclass
class _ReadAhead:
    slots: list[int]


@dataclass
class _Barrier:
    done: threading.Event = field(default_factory=threading.Event)


class DiskKVStore:
    """`block_bytes` 0: no data (a simulated runner's tier): only the index and the lock."""

    def __init__(self, folder: str | Path, rank: int, num_slots: int, block_bytes: int, block_size: int,
                 fingerprint: dict, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.folder = Path(folder)
        self.rank, self.num_slots, self.block_bytes, self.block_size = rank, num_slots, block_bytes, block_size
        self.fingerprint = fingerprint
        self.max_pending_bytes = max_pending_bytes
        self.index_path = self.folder / f"kv-rank{rank}.index"
        self._lock_fd = self._data_fd = self._slots_fd = -1
        self.written: np.ndarray | None = None  # `.slots` as this store last wrote it
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.folder / f"kv-rank{rank}.lock")
            if block_bytes:
                self._data_fd = _open_sized(self.folder / f"kv-rank{rank}.bin", num_slots * block_bytes, reserve=True)
                self._slots_fd = _open_sized(self.folder / f"kv-rank{rank}.slots", num_slots * 8)
                self.written = np.zeros(num_slots, dtype=np.int64)
                os.preadv(self._slots_fd, [self.written], 0)
            self.entries = self._take_over()  # what the engine's table starts from
        except OSError as exc:  # not a folder, no room on the drive for the file: say so, as a bad setting
            self._close_files()
            raise ValueError(f"the disk KV folder {self.folder} cannot hold {num_slots * block_bytes} bytes of "
                             f"slots: {exc}") from exc
        except BaseException:
            self._close_files()
            raise
        self._cond = threading.Condition()
        self._jobs: deque[_Write | _Index | _ReadAhead | _Barrier] = deque()
        self._pending: dict[int, tuple[int, np.ndarray]] = {}  # slot -> (write seq, its queued bytes)
        self._wanted: set[int] = set()  # slots asked to be read ahead, not loaded or dropped since
        self._ahead: dict[int, np.ndarray] = {}  # slot -> its bytes, read ahead
        self._read_done: list[int] = []  # read ahead since `take_read_ahead_done`
        self.report_reads = True  # False on a tensor-parallel worker: rank 0's reads say when they are done
        self._pending_bytes = self._seq = 0
        self._closing = False
        self.error: BaseException | None = None
        self.stalled_s = self.write_s = 0.0
        self.written_blocks = self.read_blocks = self.pending_reads = self.ahead_reads = 0
        self._thread = threading.Thread(target=self._run, name=f"pitstop-disk-kv-r{rank}", daemon=True)
        self._thread.start()

    # ---- taking over an earlier engine's blocks ----------------------------------------------------

    def _take_over(self) -> list[DiskEntry]:
        try:
            entries = read_index(self.index_path, self.fingerprint, self.block_size)
        except (IndexUnusable, OSError) as exc:
            log.warning("disk KV tier %s: ignoring the index %s: %s; starting empty", self.folder,
                        self.index_path.name, exc)
            self.reset()
            return []
        if self.written is None:
            return [e for e in entries if e.slot < self.num_slots]
        written = self.written
        return [e for e in entries if e.slot < self.num_slots and e.block_hash != 0 and written[e.slot] == e.block_hash]

    def reset(self) -> None:
        """Forget every block: no index, no slot trusted (before the store writes anything)."""
        self.index_path.unlink(missing_ok=True)
        if self.written is not None:
            self.written[:] = 0
            os.pwrite(self._slots_fd, self.written.tobytes(), 0)
            os.fsync(self._slots_fd)

    # ---- the engine thread's side ------------------------------------------------------------------

    def write(self, slots: list[int], hashes: list[int], data: np.ndarray) -> None:
        """Queue `data` (one row of `block_bytes` a slot, handed over: not changed after) for `slots`."""
        assert self.block_bytes and data.shape == (len(slots), self.block_bytes)
        with self._cond:
            self._check()
            if self._pending_bytes and self._pending_bytes + data.nbytes > self.max_pending_bytes:
                started = time.perf_counter()
                while self._pending_bytes and self._pending_bytes + data.nbytes > self.max_pending_bytes:
                    self._cond.wait()
                    self._check()
                self.stalled_s += time.perf_counter() - started
            self._seq += 1
            for row, slot in enumerate(slots):
                self._pending[slot] = (self._seq, data[row])
            self._pending_bytes += data.nbytes
            self._jobs.append(_Write(self._seq, slots, hashes, data))
            self._cond.notify_all()

    def read(self, slots: list[int]) -> np.ndarray:
        """The blocks in `slots`, one row each: from a write still queued, a read ahead, or the file."""
        out = np.empty((len(slots), self.block_bytes), dtype=np.uint8)
        with self._cond:
            self._check()
            queued = [self._pending.get(slot) for slot in slots]
            ahead = [self._ahead.pop(slot, None) for slot in slots]
            self._wanted.difference_update(slots)
        from_file = []
        for row, (pending, early) in enumerate(zip(queued, ahead, strict=True)):
            if pending is not None:
                out[row] = pending[1]
                self.pending_reads += 1
            elif early is not None:
                out[row] = early
                self.ahead_reads += 1
            else:
                from_file.append(row)
        for run in _runs([slots[row] for row in from_file], self.block_bytes):
            rows = [out[from_file[i]] for i in run]
            self._preadv(rows, slots[from_file[run[0]]])
        self.read_blocks += len(slots)
        return out

    def read_ahead(self, slots: list[int], drops: list[int]) -> None:
        """Read `slots` into memory behind the step; forget what was read (or asked) of `drops`."""
        with self._cond:
            self._wanted.difference_update(drops)
            for slot in drops:
                self._ahead.pop(slot, None)
            self._wanted.update(slots)
        if slots:
            self._submit(_ReadAhead(list(slots)))

    def take_read_ahead_done(self) -> list[int]:
        with self._cond:
            done, self._read_done = self._read_done, []
        return done

    def persist(self, entries: list[DiskEntry]) -> None:
        """Write the index of `entries` (least recent first) once the writes queued before it are done."""
        self._submit(_Index(list(entries)))

    def flush(self) -> None:
        """Wait until everything queued so far is written."""
        barrier = _Barrier()
        self._submit(barrier)
        barrier.done.wait()
        with self._cond:
            self._check()

    def drop_page_cache(self) -> None:
        """Sync the file and evict it from the page cache: the next reads come from the drive (timing)."""
        self.flush()
        if self._data_fd >= 0:
            os.fsync(self._data_fd)
            os.posix_fadvise(self._data_fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Finish the queued work, then close the files and release the folder (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._close_files()

    def _submit(self, job: _Index | _ReadAhead | _Barrier) -> None:
        with self._cond:
            self._check()
            self._jobs.append(job)
            self._cond.notify_all()

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the disk KV tier's writer failed: {self.error!r}") from self.error
        if self._closing:
            raise RuntimeError("the disk KV tier is closed")

    def _close_files(self) -> None:
        for fd in (self._data_fd, self._slots_fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._data_fd = self._slots_fd = self._lock_fd = -1

    # ---- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs[0]
            try:
                if self.error is None:
                    self._do(job)
            except Exception as exc:  # an I/O error: the engine's next disk call raises it
                log.exception("disk KV tier %s: writing failed", self.folder)
                self.error = exc
            finally:
                if isinstance(job, _Barrier):
                    job.done.set()
                with self._cond:
                    self._jobs.popleft()
                    if isinstance(job, _Write):
                        self._pending_bytes -= job.data.nbytes
                        for slot in job.slots:
                            if self._pending.get(slot, (None,))[0] == job.seq:
                                del self._pending[slot]
                    self._cond.notify_all()

    def _do(self, job: _Write | _Index | _ReadAhead | _Barrier) -> None:
        if isinstance(job, _Write):
            self._write(job)
        elif isinstance(job, _ReadAhead):
            self._read_ahead(job)
        elif isinstance(job, _Index):
            written = self.written
            entries = job.entries if written is None else [
                e for e in job.entries if e.block_hash != 0 and written[e.slot] == e.block_hash]
            if self._data_fd >= 0:  # what the index points at, on the drive before the index
                os.fsync(self._data_fd)
                os.fsync(self._slots_fd)
            write_index(self.index_path, self.fingerprint, entries, self.block_size)

    def _read_ahead(self, job: _ReadAhead) -> None:
        with self._cond:  # those loaded or dropped before their turn came are not read
            slots = [slot for slot in job.slots if slot in self._wanted]
        for run in _runs(slots, self.block_bytes):  # consecutive slots in one call, the GIL released
            data = np.empty((len(run), self.block_bytes), dtype=np.uint8)
            self._preadv(list(data), slots[run[0]])
            with self._cond:
                for i, row in zip(run, data, strict=True):
                    if slots[i] in self._wanted:
                        self._ahead[slots[i]] = row
                        if self.report_reads:
                            self._read_done.append(slots[i])

    def _preadv(self, rows: list[np.ndarray], first_slot: int) -> None:
        if os.preadv(self._data_fd, rows, first_slot * self.block_bytes) != len(rows) * self.block_bytes:
            raise OSError(f"disk KV tier: slots {first_slot}.. of {self.folder} read short")

    def _write(self, job: _Write) -> None:
        started = time.perf_counter()
        written = self.written
        assert written is not None
        stale = [slot for slot in job.slots if written[slot] != 0]
        if stale:  # no longer trusted, on the drive, before the new bytes can land there
            for slot in stale:
                written[slot] = 0
                os.pwrite(self._slots_fd, written[slot: slot + 1].tobytes(), slot * 8)
            os.fdatasync(self._slots_fd)
        for run in _runs(job.slots, self.block_bytes):
            size = len(run) * self.block_bytes
            if os.pwritev(self._data_fd, [job.data[i] for i in run], job.slots[run[0]] * self.block_bytes) != size:
                raise OSError(f"slots {job.slots[run[0]]}.. wrote short")
        for slot, block_hash in zip(job.slots, job.hashes, strict=True):
            written[slot] = block_hash
            os.pwrite(self._slots_fd, written[slot: slot + 1].tobytes(), slot * 8)
        with self._cond:  # a read ahead of what the slot held before is stale now
            for slot in job.slots:
                self._ahead.pop(slot, None)
        self.written_blocks += len(job.slots)
        self.write_s += time.perf_counter() - started


def _runs(slots: list[int], block_bytes: int) -> list[range]:
    """Index ranges of `slots` whose slots follow each other in the file: one system call each, of at most
    _RUN_BYTES and IOV_MAX (1,024) buffers."""
    longest = max(1, min(1024, _RUN_BYTES // max(1, block_bytes)))
    runs, start = [], 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1 or i - start == longest:
            runs.append(range(start, i))
            start = i
    return runs


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"the disk KV folder {path.parent} is in use by another engine ({path.name} is locked)") from None
    return fd


def _open_sized(path: Path, size: int, reserve: bool = False) -> int:
    """The file at `path`, made exactly `size` bytes; `reserve`: its blocks allocated now, so a drive too
    small fails here rather than in the middle of serving."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        if reserve and size:
            os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        raise
    return fd
