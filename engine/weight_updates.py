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
The engine must have no request in flight: the server pauses it first (engine/pause.py).

A draft model (engine/draft_model.py) takes new weights in the same call with `draft_model_path`, under
the same checks against the draft served. (SGLang reloads an EAGLE draft with its target in this call,
and vLLM's weight transfer takes `include_draft`; neither names a separate draft folder, hence this field.)
The target loads first, then the draft; a draft that fails rolls the target back to the folder it served,
so the engine never serves a new target with an old draft or the reverse (WeightsLostError where that
reload fails). Without it the draft keeps its weights: its
proposals are still checked against the new target, and the answer says so. The draft's acceptance rate
over the round that ends (the drafts checked since the weights last changed) is in the answer, for a
trainer to see it fall as the target moves away from a draft that stays. An EAGLE head (engine/eagle.py)
keeps its own weights but reads the target's features: its prefix cache is forgotten at every update."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.model.config import ModelConfig
from engine.sampling_params import InvalidRequestError

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine

PARAM = "model_path"
DRAFT_PARAM = "draft_model_path"


class WeightsLostError(RuntimeError):
    """New weights failed to load and the old ones could not be reloaded: the instance must stop serving."""


class EngineBusyError(RuntimeError):
    """The engine has requests in flight (a 409): pause it first."""


@dataclass(frozen=True)
class WeightUpdate:
    model_path: str
    load_s: float  # reading and copying the tensors, every rank
    forgotten_blocks: int  # cached prefixes dropped: the GPU's, pinned, host and disk
    has_draft: bool = False  # the engine speculates with a draft model
    draft_model_path: str | None = None  # the draft's new folder; None: it kept its weights
    draft_load_s: float = 0.0
    acceptance_rate: float | None = None  # the draft's, over the round that ended (None: no draft checked)

    def as_json(self) -> dict[str, Any]:
        """The HTTP answer (engine/server/weight_endpoints.py), also the gateway's for an engine in its process."""
        body: dict[str, Any] = {"success": True, "message": f"weights loaded from {self.model_path}",
                                "model_path": self.model_path, "load_s": round(self.load_s, 4),
                                "forgotten_blocks": self.forgotten_blocks}
        if self.has_draft:
            body["draft"] = {"updated": self.draft_model_path is not None, "model_path": self.draft_model_path,
                             "load_s": round(self.draft_load_s, 4),
                             "acceptance_rate_before": self.acceptance_rate,
                             "message": (f"draft weights loaded from {self.draft_model_path}" if self.draft_model_path
                                         else "the draft model kept its weights (send draft_model_path to update it)")}
        return body


def checked_folder(model_path: str, served: ModelConfig, param: str = PARAM) -> Path:
    """`model_path` as a folder of the same model as `served` (InvalidRequestError naming what differs)."""
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise InvalidRequestError(f"{model_path!r} is not a model folder (no config.json in it)", param)
    try:
        config = ModelConfig.from_dir(folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequestError(f"{model_path!r}: its config.json cannot be read: {exc}", param) from None
    # What the checkpoint was saved as and its special tokens do not change the parameters' shapes.
    comparable = replace(config, torch_dtype=served.torch_dtype, bos_token_id=served.bos_token_id,
                         eos_token_ids=served.eos_token_ids)
    if comparable != served:
        differing = [name for name in served.__dataclass_fields__
                     if getattr(comparable, name) != getattr(served, name)]
        raise InvalidRequestError(f"{model_path!r} is another model than the one served: its config differs in "
                                  f"{', '.join(differing)}", param)
    return folder


def draft_runner(engine: LLMEngine) -> Any:
    """The draft model's runner (engine/draft_model.py), or None: no draft model, or an n-gram drafter."""
    runner = getattr(getattr(engine.scheduler, "drafter", None), "runner", None)
    return runner if hasattr(runner, "update_weights") else None


def checked_folders(engine: LLMEngine, model_path: str, draft_model_path: str | None) -> tuple[Path, Path | None]:
    """The target's folder and the draft's (None: kept), each checked against the model it replaces."""
    folder = checked_folder(model_path, engine.runner.full_config)  # type: ignore[attr-defined]
    if draft_model_path is None:
        return folder, None
    draft = draft_runner(engine)
    if draft is None:
        raise InvalidRequestError("this engine speculates with no draft model: 'draft_model_path' has nothing to "
                                  "update", DRAFT_PARAM)
    return folder, checked_folder(draft_model_path, draft.full_config, DRAFT_PARAM)


def update_weights(engine: LLMEngine, model_path: str, draft_model_path: str | None = None) -> WeightUpdate:
    """On the engine's thread, with nothing in flight: the runner's new weights (and the draft's, with
    `draft_model_path`), then a prefix cache with nothing from the old ones."""
    runner: Any = engine.runner
    if not hasattr(runner, "update_weights"):
        raise InvalidRequestError("this engine's runner has no weights to update (a simulated one)", PARAM)
    if engine.has_unfinished():
        raise EngineBusyError("requests are in flight: pause the engine first (POST /pause) and update "
                              "its weights then")
    folder, draft_folder = checked_folders(engine, model_path, draft_model_path)
    previous = runner.model_dir
    started = time.perf_counter()
    runner.update_weights(folder)
    load_s = time.perf_counter() - started
    drafter, draft_load_s = engine.scheduler.drafter, 0.0
    if draft_folder is not None:
        started = time.perf_counter()
        try:
            draft_runner(engine).update_weights(draft_folder, DRAFT_PARAM)
        except InvalidRequestError as exc:  # the draft kept its weights: so does the target
            _roll_back(runner, previous, exc)
            raise InvalidRequestError(f"{exc}; the target's weights of {previous} are served again",
                                      DRAFT_PARAM) from None
        draft_load_s = time.perf_counter() - started
    if draft_folder is not None or getattr(drafter, "reads_target_features", False):
        drafter.block_manager.reset_prefix_cache()  # type: ignore[union-attr]  # its KV came from the old weights
    has_draft = draft_runner(engine) is not None
    return WeightUpdate(str(folder), load_s, engine.block_manager.reset_prefix_cache(), has_draft,
                        str(draft_folder) if draft_folder is not None else None, draft_load_s,
                        drafter.new_round() if has_draft else None)  # type: ignore[union-attr]


def _roll_back(runner: Any, previous: Path, cause: Exception) -> None:
    """The target back on `previous` after its draft failed; WeightsLostError where it cannot be (a new target
    beside the old draft is never served)."""
    try:
        runner.update_weights(previous)
    except Exception as again:
        raise WeightsLostError(f"the draft's weights failed to load ({cause}) and reloading the target's "
                               f"{previous} failed too ({again})") from again
