"""All-reduce through shared memory, for tensor-parallel ranks that are processes on one CPU host (as
vLLM's CPU backend does): gloo's all-reduce crosses loopback TCP, and a decode step makes two a layer;
through gloo, two ranks decoded slower than one in bench/results/tensor_parallel.json.

One file mapped by every rank holds a generation counter per rank (a cache line each) and two slots of
`chunk` elements per rank. A call writes this rank's values into the generation's slot, publishes the
generation, waits until every rank has published it, and sums the slots in rank order, so every rank
gets the same bits. Slots alternate between generations: a rank can only start generation g + 2 after
seeing every rank publish g + 1, by which time they have all read generation g's slots. Larger tensors
go through in chunks. Publishing after writing relies on x86's ordered stores (other CPUs use gloo).
A rank that waits spins briefly, then sleeps between checks (a spinning rank would take the core from the
one it waits for), checks now and then that its peers are alive, and gives up after `timeout_s`."""

from __future__ import annotations

import mmap
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_LINE = 64  # bytes between two ranks' counters: no false sharing
_SPINS = 2000  # checks on the core before sleeping (some 100-200 us)
_NAP_S = 20e-6  # a sleep between checks after that (the kernel makes it some 60 us)
_CHECK_EVERY = 1000  # sleeps between liveness and timeout checks


def shm_supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def create_file(path: Path, size: int, chunk: int, dtype: torch.dtype) -> None:
    path.write_bytes(b"")
    os.truncate(path, size * _LINE + 2 * size * chunk * dtype.itemsize)


class ShmAllReduce:
    def __init__(self, path: Path, rank: int, size: int, chunk: int, dtype: torch.dtype,
                 peers_alive: Callable[[], bool], timeout_s: float) -> None:
        self.rank, self.size, self.chunk, self.dtype = rank, size, chunk, dtype
        self.peers_alive, self.timeout_s = peers_alive, timeout_s
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        self.counters = np.ndarray((size, _LINE // 8), dtype=np.int64, buffer=self._map)
        self.slots = torch.frombuffer(self._map, dtype=dtype, offset=size * _LINE,
                                      count=2 * size * chunk).view(2, size, chunk)
        self.generation = int(self.counters[rank, 0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Sums `x` (contiguous, this group's dtype) over the ranks, in place."""
        flat = x.view(-1)
        for start in range(0, flat.numel(), self.chunk):
            part = flat[start: start + self.chunk]
            self._reduce(part)
        return x

    def _reduce(self, part: torch.Tensor) -> None:
        generation = self.generation + 1
        slots = self.slots[generation % 2, :, : part.numel()]
        slots[self.rank].copy_(part)
        self.counters[self.rank, 0] = generation  # published after the values (x86 keeps stores in order)
        for peer in range(self.size):
            if peer != self.rank:
                self._wait_for(peer, generation)
        torch.sum(slots, dim=0, out=part)
        self.generation = generation

    def _wait_for(self, peer: int, generation: int) -> None:
        counter = self.counters[peer]
        for _ in range(_SPINS):  # a peer a few microseconds behind: wait on the core
            if counter[0] >= generation:
                return
        started, naps = time.monotonic(), 0
        while counter[0] < generation:
            # Further behind: sleep, so the core goes to the rank (or the threads) being waited for.
            time.sleep(_NAP_S)
            naps += 1
            if naps % _CHECK_EVERY == 0:
                if not self.peers_alive():
                    raise RuntimeError(f"tensor-parallel rank {peer} is gone (shared-memory all-reduce)")
                if time.monotonic() - started > self.timeout_s:
                    raise RuntimeError(f"tensor-parallel rank {peer} did not reach the all-reduce in "
                                       f"{self.timeout_s:.0f} s")
