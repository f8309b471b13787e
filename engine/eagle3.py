"""Speculative decoding with an EAGLE-3 head (speculative_config method "eagle3", as vLLM's and SGLang's):
engine/eagle.py's proposer (the head's own paged KV cache, a shadow sequence a request shifted by one, the
drafts checked by engine/speculation.py) over engine/eagle3_head.py's head, with EAGLE-3's features.

The features are the inputs of three of the target's layers (the head's `aux_layer_ids`), caught by forward
pre-hooks on those layers as each target step runs (the target's forward is left as it is), concatenated
and projected by the head's fc once, when the step's rows are recorded; from there they are kept, trimmed
and read as EAGLE's are. A draft row reads the head's own output at the row before, before its final norm."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.hooks import RemovableHandle

from engine.config import SpeculativeConfig
from engine.eagle import EagleProposer, TargetFeatures
from engine.eagle3_head import Eagle3Head, eagle3_on_target, load_eagle3_head, read_eagle3_weights
from engine.eagle_head import EagleRunner
from engine.speculation import SpeculationCounters

if TYPE_CHECKING:
    from engine.torch_runner import TorchModelRunner


class AuxiliaryFeatures(TargetFeatures):
    """The target's features for an EAGLE-3 head: fc([layer a input ; layer b input ; layer c input])."""

    def __init__(self, target: TorchModelRunner, head: Eagle3Head) -> None:
        super().__init__(target)
        self.head = head
        self.layer_ids = head.layout.aux_layer_ids
        self.caught: dict[int, torch.Tensor] = {}  # layer id -> its input in the target's running step
        layers = target.model.model.layers
        self.hooks: list[RemovableHandle] = [layers[i].register_forward_pre_hook(partial(self._catch, i))
                                             for i in sorted(set(self.layer_ids))]

    def _catch(self, layer_id: int, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.caught[layer_id] = args[0]

    def features_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, hidden]: the head's fc over the three layers' inputs of the step whose last hidden states
        are `hidden` (the step just run)."""
        caught, self.caught = self.caught, {}
        with torch.inference_mode():
            return self.head.combine(torch.cat([caught[i] for i in self.layer_ids], dim=-1))

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


class Eagle3Runner(EagleRunner):
    """EAGLE's head runner over an EAGLE-3 head (a level 2 sleep reloads it by EAGLE-3's names)."""

    def _load_everywhere(self, model_dir: Path) -> None:
        with torch.no_grad():
            self.head.load_weights(eagle3_on_target(read_eagle3_weights(model_dir), self.target))
        self.weights_stale = False


class Eagle3Proposer(EagleProposer):
    """The scheduler's drafter over an EAGLE-3 head (engine/scheduler.py `Drafter`)."""

    def features_for(self, runner: EagleRunner) -> TargetFeatures:
        assert isinstance(runner.head, Eagle3Head)
        return AuxiliaryFeatures(runner.target, runner.head)

    @classmethod
    def from_target(cls, target: TorchModelRunner, config: SpeculativeConfig, num_blocks: int, block_size: int,
                    enable_prefix_caching: bool = True, counters: SpeculationCounters | None = None,
                    max_catch_up: int = 512) -> Eagle3Proposer:
        """An EAGLE-3 head's proposer for `target`; ValueError where the head does not fit it."""
        assert config.model is not None
        head = load_eagle3_head(Path(config.model), target)
        runner = Eagle3Runner(head, target, num_blocks, block_size, Path(config.model))  # type: ignore[arg-type]
        return cls(runner, config, num_blocks, block_size, enable_prefix_caching, counters, max_catch_up)

    def close(self) -> None:
        assert isinstance(self.features, AuxiliaryFeatures)
        self.features.close()
        super().close()
