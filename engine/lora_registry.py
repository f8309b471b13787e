"""The LoRA adapters one engine instance serves (engine/model/lora.py): names to ids, loading and
unloading while it runs. LLMEngine takes these methods; they run on its thread, as every other engine
call does, except reading an adapter's files, which `AsyncEngine` does off it.

Ids are never reused: a request's prefix-cache hashes start from its adapter's id (engine/sequence.py),
so blocks an unloaded adapter computed can never be taken for another's. An adapter unloaded while
requests still run with it stays resident until the last of them finishes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.config import EngineConfig
from engine.sampling_params import InvalidRequestError
from engine.sequence import Sequence

if TYPE_CHECKING:
    from engine.model.lora import LoRAWeights
    from engine.runner import ModelRunner


class LoRANotFoundError(LookupError):
    """No adapter of this name is loaded."""


@dataclass(frozen=True)
class LoRAAdapter:
    name: str
    lora_id: int
    path: str
    rank: int


class LoRAAdapters:
    """The adapter half of LLMEngine (its base class): needs its config, runner and sequences."""

    config: EngineConfig
    runner: ModelRunner
    sequences: dict[str, Sequence]
    loras: dict[str, LoRAAdapter]
    _retired_loras: set[int]
    _next_lora_id: int

    @property
    def serves_lora(self) -> bool:
        return hasattr(self.runner, "add_lora")

    def check_lora_name(self, name: str) -> None:
        """That an adapter could be added under `name` now (callable from another thread: reads only)."""
        if not self.serves_lora:
            raise InvalidRequestError("this engine serves no LoRA adapters (a simulated engine)", "lora_path")
        if not name or name in self.loras:
            raise InvalidRequestError(f"an adapter named {name!r} is already loaded" if name else
                                      "an adapter needs a name", "lora_name")
        if len(self.loras) >= self.config.max_loras:
            raise InvalidRequestError(f"{len(self.loras)} adapters are loaded, this engine's max_loras: unload "
                                      "one first", "lora_name")

    def read_lora(self, path: str) -> LoRAWeights:
        """An adapter folder's weights, read and checked (LoRAError says what is wrong); any thread."""
        return self.runner.load_lora(path, self.config.max_lora_rank)  # type: ignore[attr-defined]

    def add_lora(self, name: str, path: str, weights: LoRAWeights | None = None) -> LoRAAdapter:
        """Serve the adapter at `path` as `name` (its weights read here unless given)."""
        self.check_lora_name(name)
        weights = weights or self.read_lora(path)
        adapter = LoRAAdapter(name, self._next_lora_id, path, weights.rank)
        self._next_lora_id += 1
        self.runner.add_lora(adapter.lora_id, weights)  # type: ignore[attr-defined]
        self.loras[name] = adapter
        return adapter

    def remove_lora(self, name: str) -> None:
        adapter = self.loras.pop(name, None)
        if adapter is None:
            raise LoRANotFoundError(name)
        self._retired_loras.add(adapter.lora_id)
        self._drop_if_unused(adapter.lora_id)

    def lora_id(self, name: str | None) -> int:
        """The id requests naming this adapter run with; 0 for None (the base model)."""
        if name is None:
            return 0
        adapter = self.loras.get(name)
        if adapter is None:
            raise InvalidRequestError(f"no LoRA adapter named {name!r} is loaded", "model")
        return adapter.lora_id

    def _release_lora(self, seq: Sequence) -> None:
        """A request finished: an unloaded adapter goes once nothing runs with it."""
        if seq.lora_id in self._retired_loras:
            self._drop_if_unused(seq.lora_id)

    def _drop_if_unused(self, lora_id: int) -> None:
        if not any(s.lora_id == lora_id and not s.is_finished for s in self.sequences.values()):
            self._retired_loras.discard(lora_id)
            self.runner.remove_lora(lora_id)  # type: ignore[attr-defined]
