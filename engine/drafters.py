"""Which drafter a speculative engine runs, from its config: n-gram lookup (engine/speculation.py), a draft
model (engine/draft_model.py) or an EAGLE or EAGLE-3 head (engine/eagle.py, engine/eagle3.py), and the goodput rule for its draft length
(engine/draft_length.py)."""

from __future__ import annotations

from engine.config import MODEL_METHODS, EngineConfig
from engine.draft_length import GoodputDraftLength
from engine.runner import ModelRunner
from engine.scheduler import Drafter
from engine.speculation import NgramProposer, SpeculationCounters
from engine.step_time import load_profile


def make_drafter(config: EngineConfig, runner: ModelRunner, counters: SpeculationCounters) -> Drafter | None:
    """The proposer `config.speculative` names (n-gram, a draft model or an EAGLE head); None without one."""
    spec = config.speculative
    if spec is None:
        return None
    if not getattr(runner, "verifies_drafts", False):
        raise ValueError("speculative decoding needs a runner that samples after each draft token; "
                         "this one does not")
    if spec.method in MODEL_METHODS:
        from engine.draft_model import DraftModelProposer
        from engine.eagle import EagleProposer
        from engine.eagle3 import Eagle3Proposer
        from engine.torch_runner import TorchModelRunner

        if not isinstance(runner, TorchModelRunner):
            raise ValueError(f"method {spec.method!r} drafts real tokens for a real model: a simulated engine drafts "
                             "with method 'ngram'")
        proposers = {"eagle": EagleProposer, "eagle3": Eagle3Proposer}
        proposer = proposers.get(spec.method or "", DraftModelProposer)
        return proposer.from_target(runner, spec, config.num_blocks, config.block_size,
                                    config.enable_prefix_caching, counters, config.long_prefill_token_threshold)
    return NgramProposer(spec)


def make_draft_length(config: EngineConfig, runner: ModelRunner,
                      counters: SpeculationCounters) -> GoodputDraftLength | None:
    """The goodput rule for how many drafts a step checks; None for a fixed count."""
    spec = config.speculative
    if spec is None or spec.draft_policy == "fixed":
        return None
    if spec.step_time_profile is not None:
        step_time = load_profile(spec.step_time_profile, "step_time_profile")
    elif (step_time := getattr(runner, "step_time", None)) is None:
        raise ValueError("draft_policy 'goodput' prices drafts with a step-time model: pass step_time_profile "
                         "(`pitstop engine profile` writes one for this model and device)")
    draft_time = None if spec.draft_step_time_profile is None else load_profile(
        spec.draft_step_time_profile, "draft_step_time_profile")
    return GoodputDraftLength(step_time, counters, draft_time)
