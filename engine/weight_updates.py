"""New weights for a running engine, read from a checkpoint folder (SGLang's `update_weights_from_disk`),
as an RL trainer does between rollout rounds instead of restarting the server and re-warming it.

The new folder must hold the same model: its config.json equal to the one served, bar the dtype it was
saved in and its special tokens (the served model's stay). Its tensors are copied into the parameters in
place, on every tensor-parallel rank, through the loader that loaded the first ones (engine/model/loader.py),
so quantization at load and packed or stacked projections work as they did; LoRA adapters stay loaded
and apply to the new base. A checkpoint that fails part-way (a missing tensor, a wrong shape) is rolled
back by loading the folder served before; where that fails too, the instance is dead (its step loop
raises), never half-updated and serving.

Every prefix the engine cached is forgotten once the weights change (engine/block_manager.py), pins and
the host and disk tiers' blocks included: their KV came from the old weights. A disk tier's index is
written afresh under the new folder's fingerprint, so a restart on either folder reuses only its own KV.
The engine must have no request in flight: the server pauses it first (engine/pause.py). A draft model,
if any, keeps its weights: its proposals are still checked against the new target model."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.model.config import ModelConfig
from engine.sampling_params import InvalidRequestError

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

PARAM = "model_path"


class WeightsLostError(RuntimeError):
    """New weights failed to load and the old ones could not be reloaded: the instance must stop serving."""


class EngineBusyError(RuntimeError):
    """The engine has requests in flight (a 409): pause it first."""


@dataclass(frozen=True)
class WeightUpdate:
    model_path: str
    load_s: float  # reading and copying the tensors, every rank
    forgotten_blocks: int  # cached prefixes dropped: the GPU's, pinned, host and disk


def checked_folder(model_path: str, served: ModelConfig) -> Path:
    """`model_path` as a folder of the same model as `served` (InvalidRequestError naming what differs)."""
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise InvalidRequestError(f"{model_path!r} is not a model folder (no config.json in it)", PARAM)
    try:
        config = ModelConfig.from_dir(folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequestError(f"{model_path!r}: its config.json cannot be read: {exc}", PARAM) from None
    # What the checkpoint was saved as and its special tokens do not change the parameters' shapes.
    comparable = replace(config, torch_dtype=served.torch_dtype, bos_token_id=served.bos_token_id,
                         eos_token_ids=served.eos_token_ids)
    if comparable != served:
        differing = [name for name in served.__dataclass_fields__
                     if getattr(comparable, name) != getattr(served, name)]
        raise InvalidRequestError(f"{model_path!r} is another model than the one served: its config differs in "
                                  f"{', '.join(differing)}", PARAM)
    return folder


def update_weights(engine: LLMEngine, model_path: str) -> WeightUpdate:
    """On the engine's thread, with nothing in flight: the runner's new weights, then a prefix cache
    with nothing from the old ones."""
    runner = engine.runner
    if not hasattr(runner, "update_weights"):
        raise InvalidRequestError("this engine's runner has no weights to update (a simulated one)", PARAM)
    if engine.has_unfinished():
        raise EngineBusyError("requests are in flight: pause the engine first (POST /pause) and update "
                              "its weights then")
    folder = checked_folder(model_path, runner.full_config)  # type: ignore[attr-defined]
    started = time.perf_counter()
    runner.update_weights(folder)  # type: ignore[attr-defined]
    load_s = time.perf_counter() - started
    return WeightUpdate(str(folder), load_s, engine.block_manager.reset_prefix_cache())
