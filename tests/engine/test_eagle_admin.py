"""An EAGLE head (engine/eagle.py, engine/eagle_head.py) under an RL trainer's calls: sleep mode frees the
head's KV cache with the target's (and its weights at level 2, its own embedding table included) and waking
restores them, the same greedy answers and the same drafts held before and after; a weight update of the
target forgets the head's prefix cache (its KV read the old target's features) and answers as plain
decoding on the new weights does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.config import EngineConfig, SpeculativeConfig
from engine.eagle import EagleProposer
from engine.eagle_head import EagleRunner
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_eagle import random_prompts, train_eagle_head
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from engine.weight_updates import update_weights
from tests.engine.test_async_engine import run

PROMPTS = random_prompts(4, 12, 1024)  # the head's training prompts: its drafts hold on their continuations
GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eagle_admin")
    a = make_tiny_model(root / "a", seed=0)
    head = train_eagle_head(a, root / "head", PROMPTS, new_tokens=16, steps=60)
    weights = load_file(str(head / "model.safetensors"))  # with its own embedding table (the target's values)
    weights["embed_tokens.weight"] = load_file(str(a / "model.safetensors"))["model.embed_tokens.weight"]
    save_file(weights, str(head / "model.safetensors"))
    return {"a": a, "b": make_tiny_model(root / "b", seed=1), "head": head}


def eagle(models: dict[str, Path]) -> SpeculativeConfig:
    return SpeculativeConfig(method="eagle", model=str(models["head"]), num_speculative_tokens=3)


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def head_weights(head: EagleRunner) -> list[torch.Tensor]:
    """The head's own weights: fc, its layer, and the target's embedding table it carries (a buffer)."""
    assert head.head.own_embed is not None
    return [*head.head.parameters(), head.head.own_embed]


async def answers_and_held(engine: AsyncEngine) -> tuple[list[list[int]], int, int]:
    """Each prompt's greedy tokens, and the drafts proposed and held meanwhile."""
    before = engine.engine.stats().spec
    tokens = [[t async for out in engine.generate(prompt, GREEDY) for t in out.new_token_ids] for prompt in PROMPTS]
    after = engine.engine.stats().spec
    return tokens, after.draft_tokens - before.draft_tokens, after.accepted_tokens - before.accepted_tokens


def test_sleep_frees_the_heads_kv_cache_and_weights_and_wakes_them(models: dict[str, Path]) -> None:
    engine = build_engine(models["a"], num_blocks=64, device="cpu", speculative=eagle(models))
    target: TorchModelRunner = engine.engine.runner  # type: ignore[assignment]
    head = engine.engine.scheduler.drafter.runner  # type: ignore[union-attr]
    assert isinstance(head, EagleRunner)
    kv = {"target": storage_bytes([target.kv_cache]), "head": storage_bytes([head.kv_cache])}
    weights = {"target": storage_bytes(list(target.model.parameters())), "head": storage_bytes(head_weights(head))}
    saved = [t.clone() for t in head_weights(head)]

    async def main() -> None:
        before = await answers_and_held(engine)
        assert before[2] > 0  # the trained head's drafts hold: a head woken wrong would hold others
        change = await engine.sleep(1)
        assert change.released_bytes == {"kv_cache": kv["target"] + kv["head"], "weights": 0}  # CPU: weights stay
        assert storage_bytes([head.kv_cache]) == 0 and not engine.engine.scheduler.drafter.block_manager.hash_to_block
        await engine.wake_up()
        assert storage_bytes([head.kv_cache]) == kv["head"] and head.kv_cache.shape[1] == 64
        assert await answers_and_held(engine) == before
        change = await engine.sleep(2)
        assert change.released_bytes["weights"] == weights["target"] + weights["head"]
        assert storage_bytes(head_weights(head)) == 0 and head.weights_stale
        assert (await engine.wake_up()).reloaded_weights
        assert all(torch.equal(now, then) for now, then in zip(head_weights(head), saved, strict=True))
        assert not head.weights_stale and await answers_and_held(engine) == before
        await engine.shutdown()

    run(main())


def greedy_answers(engine: LLMEngine, tag: str) -> list[list[int]]:
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"{tag}{i}", prompt, GREEDY)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return [tokens[f"{tag}{i}"] for i in range(len(PROMPTS))]


def test_a_target_update_forgets_the_heads_prefix_cache(models: dict[str, Path]) -> None:
    def engine_on(model_dir: Path, spec: SpeculativeConfig | None) -> LLMEngine:
        config = EngineConfig(block_size=4, num_blocks=128, max_model_len=256, speculative=spec)
        return LLMEngine(config, TorchModelRunner(model_dir, 128, 4))

    on_b = greedy_answers(engine_on(models["b"], None), "plain")
    engine = engine_on(models["a"], eagle(models))
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, EagleProposer)
    greedy_answers(engine, "a")
    assert proposer.block_manager.hash_to_block  # the head cached the prompts' rows, from a's features
    update = update_weights(engine, str(models["b"]))
    assert not proposer.block_manager.hash_to_block and update.forgotten_blocks > 0
    hits = proposer.block_manager.stats().prefix_hit_tokens
    assert greedy_answers(engine, "b") == on_b
    assert proposer.block_manager.stats().prefix_hit_tokens == hits  # nothing read from before the update
