"""Ranks 1..N-1 of a tensor-parallel torch runner (engine/model/parallel.py), each a process of its own.

Rank 0 is the runner in the serving process: it schedules, prepares every step's inputs and sends them
down a pipe to each worker (vLLM's driver-worker split); every rank then runs its shard of the forward
pass, meeting the others at each layer's all-reduce; only rank 0 samples. A worker that dies makes the
next all-reduce raise on rank 0 at once (one that hangs, after `timeout_s`), so the engine stops with an
error rather than waiting forever; a worker whose rank 0 is gone finds its pipe closed and exits. CPU
ranks sum through a shared-memory file (engine/model/shm_allreduce.py), removed once all have mapped it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.kv_transfer import KVTransfer
from engine.model.attention import AttentionMetadata
from engine.model.parallel import TPGroup, connect
from engine.model.shm_allreduce import ShmAllReduce, create_file, shm_supported

DEFAULT_TIMEOUT_S = 120.0  # a peer silent this long fails the step (loading a large shard counts too)
SHM_CHUNK = 1 << 20  # elements a rank's shared-memory slot holds (4 MiB of float32); larger sums go in chunks


@dataclass
class StepInputs:
    """A step as every rank runs it: KV copies first, then the forward pass over these inputs (on the
    CPU while they travel; each rank moves them to its device). Rank 0 prepares all of it, so what a vision
    model's step needs reaches every rank as one rank has it: the image features and their rows, M-RoPE's
    [3, T] positions and Gemma 3's bidirectional image spans (`meta.image_spans`)."""

    kv_transfers: list[KVTransfer]
    input_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    meta: AttentionMetadata | None = None
    lora_groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)  # engine/model/lora.py
    image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None  # rows and their features (rank 0 encodes)

    def to(self, device: torch.device) -> StepInputs:
        if self.meta is None or self.input_ids is None or self.positions is None:
            return self
        meta = AttentionMetadata(self.meta.slot_mapping.to(device), self.meta.block_tables.to(device),
                                 self.meta.query_starts, self.meta.query_lens, self.meta.context_lens,
                                 self.meta.block_size, self.meta.image_spans,
                                 None if self.meta.group_tables is None else  # a grouped runner's (one rank)
                                 (self.meta.group_tables[0].to(device), self.meta.group_tables[1].to(device)))
        groups = [(lora_id, None if rows is None else rows.to(device)) for lora_id, rows in self.lora_groups]
        images = None if self.image_embeds is None else (self.image_embeds[0].to(device), self.image_embeds[1].to(device))
        return StepInputs(self.kv_transfers, self.input_ids.to(device), self.positions.to(device), meta, groups, images)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r's device: the r-th GPU after rank 0's, or the CPU."""
    if device.type == "cuda":
        return torch.device("cuda", (device.index or 0) + rank)
    return device


class TensorParallelWorkers:
    """Starts ranks 1..size-1, each building `TorchModelRunner(**runner_kwargs)` for its shard."""

    def __init__(self, size: int, device: torch.device, dtype: torch.dtype, runner_kwargs: dict[str, Any],
                 timeout_s: float = DEFAULT_TIMEOUT_S, shared_memory: bool = True) -> None:
        self.size, self.device, self.dtype, self.timeout_s = size, device, dtype, timeout_s
        self.port = free_port()
        self.shm_path: Path | None = None
        if shared_memory and device.type == "cpu" and shm_supported():
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            self.shm_path = Path(folder) / f"pitstop-tp-{os.getpid()}-{self.port}"
            create_file(self.shm_path, size, SHM_CHUNK, dtype)
        context = multiprocessing.get_context("spawn")  # CUDA and torch's threads do not survive a fork
        self.pipes = []
        self.processes = []
        for rank in range(1, size):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve_rank, name=f"pitstop-tp-rank{rank}", daemon=True,
                                      args=(rank, size, self.port, rank_device(device, rank), timeout_s,
                                            torch.get_num_threads(), self.shm_path, dtype, os.getpid(),
                                            runner_kwargs, theirs))
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)
        self._finalizer = weakref.finalize(self, _stop, self.pipes, self.processes, self.shm_path)

    def alive(self) -> bool:
        return all(process.is_alive() for process in self.processes)

    def join(self) -> TPGroup:
        """Rank 0's place in the group (blocks until every worker has joined it)."""
        shm = None if self.shm_path is None else ShmAllReduce(self.shm_path, 0, self.size, SHM_CHUNK, self.dtype,
                                                              self.alive, self.timeout_s)
        return connect(0, self.size, self.port, self.device, self.timeout_s, shm)

    def wait_ready(self) -> None:
        """Waits for every worker to load its shard; raises with a worker's error if one failed."""
        for rank, pipe in enumerate(self.pipes, start=1):
            if not pipe.poll(self.timeout_s):
                raise RuntimeError(f"tensor-parallel rank {rank} did not load its shard in {self.timeout_s:.0f} s")
            status = pipe.recv()
            if status != "ready":
                raise ValueError(f"tensor-parallel rank {rank}: {status}")
        if self.shm_path is not None:  # every rank has it mapped: the name is no longer needed
            self.shm_path.unlink(missing_ok=True)

    def send(self, step: StepInputs | tuple) -> None:
        """A step, or a change every rank makes: ("add_lora", id, the whole adapter), ("remove_lora", id),
        ("persist_disk", entries)."""
        for rank, pipe in enumerate(self.pipes, start=1):
            try:
                pipe.send(step)
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                raise RuntimeError(f"tensor-parallel rank {rank} is gone: {exc}") from exc

    def call(self, name: str, *args: Any) -> list[Any]:
        """Every worker runs its runner's `name(*args)` after what was sent before; their results, rank 1
        first (a worker's error raised here)."""
        self.send(("call", name, *args))
        results = []
        for rank, pipe in enumerate(self.pipes, start=1):
            if not pipe.poll(self.timeout_s):
                raise RuntimeError(f"tensor-parallel rank {rank} did not answer {name} in {self.timeout_s:.0f} s")
            reply = pipe.recv()
            if isinstance(reply, _CallFailed):
                raise RuntimeError(f"tensor-parallel rank {rank}: {name}: {reply.error}")
            results.append(reply)
        return results

    def close(self) -> None:
        self._finalizer()


@dataclass(frozen=True)
class _CallFailed:
    error: str


def _stop(pipes: list, processes: list, shm_path: Path | None) -> None:
    if shm_path is not None:
        shm_path.unlink(missing_ok=True)
    for pipe in pipes:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):  # already gone
            pipe.send(None)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)


def _serve_rank(rank: int, size: int, port: int, device: torch.device, timeout_s: float, threads: int,
                shm_path: Path | None, dtype: torch.dtype, parent: int, runner_kwargs: dict[str, Any],
                pipe: Any) -> None:
    from engine.torch_runner import TorchModelRunner

    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    shm = None if shm_path is None else ShmAllReduce(shm_path, rank, size, SHM_CHUNK, dtype,
                                                     lambda: os.getppid() == parent, timeout_s)
    tp = connect(rank, size, port, device, timeout_s, shm)
    try:
        runner = TorchModelRunner(**runner_kwargs, device=device, tp=tp)
    except Exception as exc:  # a shard that cannot load: rank 0 says why
        pipe.send(f"{type(exc).__name__}: {exc}")
        return
    pipe.send("ready")
    try:
        while True:
            try:
                step = pipe.recv()
            except EOFError:  # rank 0 is gone
                return
            if step is None:
                return
            if isinstance(step, tuple) and step[0] == "call":
                try:
                    pipe.send(getattr(runner, step[1])(*step[2:]))
                except Exception as exc:
                    pipe.send(_CallFailed(f"{type(exc).__name__}: {exc}"))
            elif isinstance(step, tuple):
                getattr(runner, step[0])(*step[1:])
            else:
                runner.run_shard(step)
    finally:
        runner.close()  # its disk tier's queued writes finished and its file closed
