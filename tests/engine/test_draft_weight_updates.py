"""A weight update that updates the draft model too (engine/weight_updates.py `draft_model_path`): after it
an engine speculating with its draft answers, and drafts, token for token as a fresh engine on the new target
and draft folders; without it the draft keeps its weights and the answer says so; a draft folder of another
shape, or one that fails part-way, is refused with the target rolled back (the engine never serves a mixed
pair), and a rollback that fails too stops the instance; the draft's acceptance rate over the round that
ended is in the answer. Over HTTP and through the gateway: tests/engine/test_draft_weight_endpoints.py."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.tiny_model import make_tiny_model, make_truncated_model
from engine.torch_runner import TorchModelRunner
from engine.weight_updates import DRAFT_PARAM, WeightsLostError, draft_runner, update_weights

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def target_and_draft_folders(root: Path) -> dict[str, Path]:
    """Targets `a` and `b` (other random weights), their one-layer drafts, and a two-layer draft of `b`."""
    a, b = make_tiny_model(root / "a", seed=0), make_tiny_model(root / "b", seed=1)
    return {"a": a, "b": b, "draft_a": make_truncated_model(a, root / "draft_a", 1),
            "draft_b": make_truncated_model(b, root / "draft_b", 1),
            "draft_b2": make_truncated_model(b, root / "draft_b2", 2)}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return target_and_draft_folders(tmp_path_factory.mktemp("draft-weights"))


def engine_on(target: Path, draft: Path | None) -> LLMEngine:
    spec = (SpeculativeConfig(model=str(draft), num_speculative_tokens=4, acceptance_method="coupled")
            if draft is not None else None)
    config = EngineConfig(num_blocks=64, max_model_len=512, max_num_batched_tokens=64, speculative=spec)
    return LLMEngine(config, TorchModelRunner(target, 64, 16, device="cpu"))


def answers(engine: LLMEngine) -> tuple[list[list[int]], tuple[int, int]]:
    """Greedy answers to three prompts, and the draft tokens checked and accepted meanwhile."""
    rng = random.Random(0)
    before = (engine.spec.draft_tokens, engine.spec.accepted_tokens)
    seqs = [engine.add_request(f"r{len(engine.sequences)}-{i}", [rng.randrange(1000) for _ in range(30)], GREEDY)
            for i in range(3)]
    while engine.has_unfinished():
        engine.step()
    drafted = (engine.spec.draft_tokens - before[0], engine.spec.accepted_tokens - before[1])
    assert drafted[0] > 0
    return [s.output_token_ids for s in seqs], drafted


def draft_weights(engine: LLMEngine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in draft_runner(engine).model.parameters()]


def test_a_draft_updated_with_the_target_drafts_as_a_fresh_engine_on_both(models: dict[str, Path]) -> None:
    fresh = answers(engine_on(models["b"], models["draft_b"]))
    engine = engine_on(models["a"], models["draft_a"])
    on_a = answers(engine)
    assert on_a[0] != fresh[0]
    update = update_weights(engine, str(models["b"]), str(models["draft_b"]))
    assert update.draft_model_path == str(models["draft_b"]) and update.has_draft
    assert update.acceptance_rate == on_a[1][1] / on_a[1][0]  # the round on a's pair, ended by this update
    body = update.as_json()["draft"]
    assert body["updated"] is True and body["model_path"] == str(models["draft_b"])
    assert answers(engine) == fresh  # the tokens, and every draft checked and accepted as the fresh pair's
    update_weights(engine, str(models["a"]), str(models["draft_a"]))
    assert answers(engine) == on_a


def test_without_a_draft_path_the_draft_keeps_its_weights(models: dict[str, Path]) -> None:
    fresh = answers(engine_on(models["b"], models["draft_b"]))
    kept = answers(engine_on(models["b"], models["draft_a"]))
    assert kept[0] == fresh[0] and kept[1] != fresh[1]  # same answers, other drafts: the pair is told apart
    engine = engine_on(models["a"], models["draft_a"])
    weights = draft_weights(engine)
    answers(engine)
    update = update_weights(engine, str(models["b"]))
    assert update.draft_model_path is None
    assert update.as_json()["draft"]["updated"] is False
    assert "kept its weights" in update.as_json()["draft"]["message"]
    assert all(torch.equal(old, new) for old, new in zip(weights, draft_weights(engine), strict=True))
    assert answers(engine) == kept


def test_a_draft_of_another_shape_or_a_broken_one_leaves_both_as_they_were(models: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    engine = engine_on(models["a"], models["draft_a"])
    on_a = answers(engine)
    with pytest.raises(InvalidRequestError, match="differs in num_layers") as raised:
        update_weights(engine, str(models["b"]), str(models["draft_b2"]))
    assert raised.value.param == DRAFT_PARAM
    assert answers(engine) == on_a  # refused before anything loaded
    broken = tmp_path / "broken"  # the draft's shape, a tensor missing: it fails after the target loaded
    shutil.copytree(models["draft_b"], broken)
    tensors = load_file(broken / "model.safetensors")
    missing = max(name for name in tensors if "post_attention_layernorm" in name)
    save_file({k: v for k, v in tensors.items() if k != missing}, broken / "model.safetensors")
    with pytest.raises(InvalidRequestError, match="served again") as raised:
        update_weights(engine, str(models["b"]), str(broken))
    assert raised.value.param == DRAFT_PARAM
    assert engine.runner.model_dir == models["a"]  # type: ignore[attr-defined]
    assert answers(engine) == on_a  # the target rolled back to a, the draft still a's


def test_a_draft_path_without_a_draft_model_is_refused(models: dict[str, Path]) -> None:
    engine = engine_on(models["a"], None)
    with pytest.raises(InvalidRequestError, match="no draft model") as raised:
        update_weights(engine, str(models["b"]), str(models["draft_b"]))
    assert raised.value.param == DRAFT_PARAM
    assert engine.runner.model_dir == models["a"]  # type: ignore[attr-defined]
    assert "draft" not in update_weights(engine, str(models["b"])).as_json()


def test_a_target_that_cannot_be_rolled_back_is_fatal(models: dict[str, Path], tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(models["a"], served)
    engine = engine_on(served, models["draft_a"])
    broken = tmp_path / "broken"
    shutil.copytree(models["draft_b"], broken)
    tensors = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.0." not in k}, broken / "model.safetensors")
    (served / "model.safetensors").unlink()  # the target's folder is gone: nothing to roll it back to
    with pytest.raises(WeightsLostError, match="failed too"):
        update_weights(engine, str(models["b"]), str(broken))
