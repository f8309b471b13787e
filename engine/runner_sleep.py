"""A torch runner's memory while its engine sleeps (engine/sleep.py), on every tensor-parallel rank: the
runner half of vLLM's sleep mode (TorchModelRunner's base class). Two parts, vLLM's tags:

- "kv_cache": the KV cache tensor is swapped for an empty one, so its storage is freed (on CUDA handed back
  to the driver by `empty_cache`, for another process to use), and allocated again, zeroed, with the same
  shape on wake. Its contents are forgotten (the engine forgets every cached prefix before). The host tier's
  buffer (`host_kv`, page-locked on CUDA: often tens of GiB a colocated trainer wants) goes with it and comes
  back zeroed, its slots empty: the prefix reset has emptied its table. A disk tier keeps its files and
  their index (its memory is the index and a bounded write queue, drained first: engine/disk_store.py).
- "weights": at level 1 every parameter and buffer is copied to host memory (page-locked on CUDA, so the
  copy back runs at the link's speed) and back on wake. A CPU runner's weights are host memory already:
  they stay where they are and level 1 frees none of them there. At level 2 the parameters are dropped
  (and 4-bit weights, held as buffers; other buffers, small and computed, are kept as at level 1) and
  allocated again, uninitialised, on wake: `weights_stale`
  says so until a checkpoint is loaded into them (engine/weight_loading.py clears it), and
  `refresh_weights` reloads the folder served where none was.

On a CPU runner the freed memory is host memory: glibc keeps the pages of blocks under its mmap threshold
in its arenas once freed, so the release ends with `malloc_trim`, which hands them back to the system
(without it a level 2 sleep after an update gave back about half the weights' pages: bench/sleep_mode.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.model.attention import GatherWorkspace

if TYPE_CHECKING:
    from engine.model.llama import CausalLM
    from engine.tp_workers import TensorParallelWorkers


@dataclass
class _SleptTensor:
    host: torch.Tensor | None  # its values in host memory; None: dropped (a parameter at level 2)
    shape: torch.Size
    dtype: torch.dtype


class RunnerSleep:
    """Needs the runner's model, KV cache, device, workers, CPU gather workspace and `_load_everywhere`."""

    model: CausalLM
    kv_cache: torch.Tensor
    device: torch.device
    workers: TensorParallelWorkers | None
    workspace: GatherWorkspace | None
    model_dir: Path
    weights_stale = False  # the parameters hold no checkpoint: dropped at level 2 and not loaded since
    host_kv: torch.Tensor  # the host tier's slots (engine/kv_copies.py)
    _kv_shape: tuple[torch.Size, torch.dtype] | None = None  # while the KV cache sleeps
    _host_kv_shape: torch.Size | None = None  # while the KV cache sleeps, its host tier's
    _slept_weights: dict[str, _SleptTensor] | None = None  # while the weights sleep

    if TYPE_CHECKING:
        def _load_everywhere(self, model_dir: Path) -> None: ...

    def sleep_memory(self, level: int, tags: Collection[str]) -> dict[str, int]:
        """Releases `tags` on every rank; returns the bytes the devices gave back, by tag (summed over ranks),
        and the host tier's as "kv_cache_host"."""
        others = self.workers.call("sleep_memory", level, tuple(tags)) if self.workers is not None else []
        released = {}
        if "kv_cache" in tags:
            released["kv_cache"] = self._release_kv_cache()
            if host_freed := self._release_host_kv():  # host memory, reported apart from the device's
                released["kv_cache_host"] = host_freed
        if "weights" in tags:
            released["weights"] = self._release_weights(level)
        if self.device.type == "cuda":  # the caching allocators would keep it for this process alone
            torch.cuda.empty_cache()
            if hasattr(torch._C, "_host_emptyCache"):  # page-locked blocks are cached as well
                torch._C._host_emptyCache()
        else:
            _trim_host_heap()
        return {tag: freed + sum(rank.get(tag, 0) for rank in others) for tag, freed in released.items()}

    def wake_memory(self, tags: Collection[str]) -> None:
        """Allocates `tags` again on every rank, the weights first (the KV cache takes what is left)."""
        if self.workers is not None:
            self.workers.call("wake_memory", tuple(tags))
        if "weights" in tags:
            self._restore_weights()
        if "kv_cache" in tags:
            self._restore_kv_cache()
            self._restore_host_kv()
        if self.device.type == "cuda":  # the copies from host memory are asynchronous
            torch.cuda.synchronize(self.device)

    def refresh_weights(self) -> bool:
        """Stale weights (level 2, no update since) reloaded from the folder served; whether there were."""
        if not self.weights_stale:
            return False
        self._load_everywhere(self.model_dir)
        return True

    @property
    def kv_cache_asleep(self) -> bool:
        return self._kv_shape is not None

    def _release_kv_cache(self) -> int:
        if self._kv_shape is not None:
            return 0
        freed = self.kv_cache.untyped_storage().nbytes()
        self._kv_shape = (self.kv_cache.shape, self.kv_cache.dtype)
        self.kv_cache = self.kv_cache.new_empty(0)
        if self.workspace is not None:  # the CPU's gather buffers: scratch sized by the largest step's context
            self.workspace = GatherWorkspace()
        return freed

    def _restore_kv_cache(self) -> None:
        if self._kv_shape is None:
            return
        shape, dtype = self._kv_shape
        self.kv_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self._kv_shape = None

    def _release_host_kv(self) -> int:
        if self._host_kv_shape is not None:
            return 0
        freed = self.host_kv.untyped_storage().nbytes()
        self._host_kv_shape = self.host_kv.shape
        self.host_kv = self.host_kv.new_empty(0)
        return freed

    def _restore_host_kv(self) -> None:
        if self._host_kv_shape is None:
            return
        pinned = self.device.type == "cuda" and self._host_kv_shape.numel() > 0  # as the runner made it
        self.host_kv = torch.zeros(self._host_kv_shape, dtype=self.host_kv.dtype, pin_memory=pinned)
        self._host_kv_shape = None

    def _release_weights(self, level: int) -> int:
        if self._slept_weights is not None:
            return 0
        # Buffers are computed (RoPE's tables) and kept, except those a module reads from the checkpoint
        # (4-bit weights: `checkpoint_buffers`), which are its weights and go with the parameters.
        kept = {name for name, _ in self.model.named_buffers()} - set(_checkpoint_buffers(self.model))
        slept: dict[str, _SleptTensor] = {}
        freed = 0
        # Host copies are all made before any tensor is swapped: one that fails (host memory) changes nothing.
        for name, tensor in self._weight_tensors():
            drop = level == 2 and name not in kept
            if not drop and self.device.type == "cpu":
                continue  # host memory already: nothing to move
            host = None if drop else _host_copy(tensor)
            slept[name] = _SleptTensor(host, tensor.shape, tensor.dtype)
        if self.device.type == "cuda":  # the copies to host memory are asynchronous
            torch.cuda.synchronize(self.device)
        for name, tensor in self._weight_tensors():
            if (entry := slept.get(name)) is not None:
                freed += tensor.untyped_storage().nbytes()
                tensor.data = entry.host if entry.host is not None else tensor.new_empty(0)
        if level == 2:
            self.weights_stale = True
        self._slept_weights = slept
        return freed

    def _restore_weights(self) -> None:
        if self._slept_weights is None:
            return
        for name, tensor in self._weight_tensors():
            if (entry := self._slept_weights.get(name)) is not None:
                tensor.data = (torch.empty(entry.shape, dtype=entry.dtype, device=self.device) if entry.host is None
                               else entry.host.to(self.device, non_blocking=True))
        self._slept_weights = None

    def _weight_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every parameter once (a tied lm_head is embed_tokens') and every buffer."""
        return [*self.model.named_parameters(), *self.model.named_buffers()]


def _checkpoint_buffers(model: torch.nn.Module) -> list[str]:
    """The buffers holding a checkpoint's values (engine/model/int4_linear.py's packed weights and scales)."""
    return [f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name in getattr(module, "checkpoint_buffers", ()) if getattr(module, name, None) is not None]


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.device.type == "cuda")
    host.copy_(tensor, non_blocking=True)
    return host


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc's; musl has none


def _trim_host_heap() -> None:
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
