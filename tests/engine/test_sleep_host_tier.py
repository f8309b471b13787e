"""Sleep mode and the host KV tier (engine/runner_sleep.py): at either level the tier's buffer is released
with the KV cache (the runner holds an empty tensor, the bytes are reported as kv_cache_host) and allocated
again, zeroed and of the same shape, when the KV cache wakes; after the wake-up the same requests answer
token for token as before and a prefix the GPU evicted is saved to the tier and loaded back from it."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.test_async_engine import greedy, run

# Two prompts of 9 blocks each on a GPU cache of 12: the second evicts the first's blocks to the host tier.
FIRST, SECOND = ([random.Random(seed).randrange(1000) for _ in range(9 * 16)] for seed in (1, 2))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("host_tier") / "a", seed=0)


def engine_on(model_dir: Path) -> AsyncEngine:
    return build_engine(model_dir, num_blocks=12, block_size=16, device="cpu", host_kv_memory_bytes=4 << 20)


async def round_trip(engine: AsyncEngine) -> tuple[list[list[int]], int]:
    """Greedy answers to the first prompt, the second, the first again; the tokens the last one found cached."""
    params = replace(greedy(6), ignore_eos=True)
    answers, cached = [], 0
    for prompt in (FIRST, SECOND, FIRST):
        outputs = [out async for out in engine.generate(prompt, params)]
        answers.append([t for out in outputs for t in out.new_token_ids])
        cached = outputs[-1].num_cached_tokens
    return answers, cached


def host_loads(engine: AsyncEngine) -> int:
    host = engine.engine.block_manager.stats().host
    assert host is not None
    return host.loaded_blocks


@pytest.mark.parametrize("level", [1, 2])
def test_the_host_tier_is_released_at_sleep_and_serves_again_after_the_wake_up(model: Path, level: int) -> None:
    engine = engine_on(model)
    runner: TorchModelRunner = engine.engine.runner  # type: ignore[assignment]
    shape, size = runner.host_kv.shape, runner.host_kv.untyped_storage().nbytes()
    assert runner.num_host_blocks > 0 and size > 0

    async def main() -> None:
        before, cached = await round_trip(engine)
        loads = host_loads(engine)
        assert cached > 0 and loads > 0  # the first prompt's blocks came back from the host tier
        assert runner.host_kv.abs().sum() > 0
        change = await engine.sleep(level)
        assert change.released_bytes["kv_cache_host"] == size
        assert runner.host_kv.numel() == 0 and runner.host_kv.untyped_storage().nbytes() == 0
        assert (await engine.wake_up()).changed == ("weights", "kv_cache")
        assert runner.host_kv.shape == shape and runner.host_kv.untyped_storage().nbytes() == size
        assert runner.host_kv.abs().sum() == 0  # zeroed: nothing of the old KV is left to be read
        after, cached = await round_trip(engine)
        assert after == before
        assert cached > 0 and host_loads(engine) > loads  # saved to the new buffer and loaded back from it
        await engine.shutdown()

    run(main())


def test_a_second_sleep_and_wake_change_nothing_more(model: Path) -> None:
    engine = engine_on(model)
    runner: TorchModelRunner = engine.engine.runner  # type: ignore[assignment]

    async def main() -> None:
        await engine.sleep(1)
        again = await engine.sleep(1)
        assert not again.changed and "kv_cache_host" not in again.released_bytes
        await engine.wake_up(["kv_cache"])
        await engine.wake_up()
        assert runner.host_kv.untyped_storage().nbytes() > 0
        answers, cached = await round_trip(engine)
        assert len(answers) == 3 and cached > 0
        await engine.shutdown()

    run(main())
