"""Sleep mode (engine/sleep.py, engine/runner_sleep.py) on the AsyncEngine: level 1 frees the KV cache's
storage and wakes it with the same shape and the same greedy answers (a CPU runner's weights stay where
they are); level 2 frees the weights too, refuses an update until they are awake and the KV cache until
they are, and answers as the new folder does after weights, update, KV cache (verl's order), or as the
folder served after a plain wake-up; requests in flight end as a pause ends them and requests that come
while asleep wait for the wake-up without entering the engine; each call that does not fit is refused;
two ranks and a draft model sleep with the engine. The HTTP half: tests/engine/test_sleep_endpoints.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.config import SpeculativeConfig
from engine.sampling_params import InvalidRequestError
from engine.sleep import SleepStateError
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.test_async_engine import greedy, make_engine, run

PROMPTS = ["The rollout engine sleeps", "while the trainer trains"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sleep")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1),
            "draft": make_tiny_model(root / "draft", seed=2, layers=1, hidden=32)}


def engine_on(model_dir: Path, **options: object) -> AsyncEngine:
    return build_engine(model_dir, num_blocks=64, device="cpu", **options)  # type: ignore[arg-type]


def runner_of(engine: AsyncEngine) -> TorchModelRunner:
    return engine.engine.runner  # type: ignore[return-value]


async def answers(engine: AsyncEngine) -> list[list[int]]:
    params = replace(greedy(10), ignore_eos=True)
    return [[t async for out in engine.generate(prompt, params) for t in out.new_token_ids] for prompt in PROMPTS]


def weight_bytes(runner: TorchModelRunner) -> list[int]:
    return [p.untyped_storage().nbytes() for p in runner.model.parameters()]


def test_level_1_frees_the_kv_cache_and_wakes_to_the_same_answers(models: dict[str, Path]) -> None:
    engine = engine_on(models["a"])
    runner = runner_of(engine)
    shape, size = runner.kv_cache.shape, runner.kv_cache.untyped_storage().nbytes()
    pointers = [p.data_ptr() for p in runner.model.parameters()]

    async def main() -> None:
        before = await answers(engine)
        assert engine.engine.block_manager.hash_to_block  # the prompts are cached: the sleep must forget them
        change = await engine.sleep(1)
        assert change.released_bytes == {"kv_cache": size, "weights": 0}  # a CPU runner's weights stay in place
        assert runner.kv_cache.untyped_storage().nbytes() == 0 and not engine.engine.block_manager.hash_to_block
        assert [p.data_ptr() for p in runner.model.parameters()] == pointers
        assert engine.is_sleeping and engine.is_paused and engine.sleep_level == 1
        woken = await engine.wake_up()
        assert woken.changed == ("weights", "kv_cache") and not woken.sleeping and not engine.is_paused
        assert runner.kv_cache.shape == shape and runner.kv_cache.untyped_storage().nbytes() == size
        outputs = [out async for out in engine.generate(PROMPTS[0], greedy(2))]
        assert outputs[-1].num_cached_tokens == 0  # nothing cached before the sleep is reused
        assert await answers(engine) == before
        await engine.shutdown()

    run(main())


def test_level_2_takes_new_weights_between_the_weights_and_the_kv_cache(models: dict[str, Path]) -> None:
    fresh = engine_on(models["b"])
    on_b = run(answers(fresh))
    run(fresh.shutdown())
    engine = engine_on(models["a"])
    runner = runner_of(engine)
    sizes = weight_bytes(runner)

    async def main() -> None:
        on_a = await answers(engine)
        assert on_a != on_b
        change = await engine.sleep(2)
        assert change.released_bytes["weights"] == sum(sizes) and set(weight_bytes(runner)) == {0}
        with pytest.raises(SleepStateError, match="wake them first") as refused:
            await engine.update_weights(str(models["b"]))
        assert refused.value.code == "weights_asleep"
        with pytest.raises(SleepStateError) as refused:
            await engine.wake_up(["kv_cache"])
        assert refused.value.code == "weights_first" and runner.kv_cache.untyped_storage().nbytes() == 0
        woken = await engine.wake_up(["weights"])
        assert woken.sleeping == ("kv_cache",) and woken.level == 2 and engine.is_paused
        assert weight_bytes(runner) == sizes and runner.weights_stale
        await engine.update_weights(str(models["b"]))
        assert engine.is_paused and not runner.weights_stale  # the sleep's pause holds until the KV cache wakes
        woken = await engine.wake_up(["kv_cache"])
        assert not woken.sleeping and not woken.reloaded_weights and not engine.is_paused
        assert await answers(engine) == on_b
        await engine.sleep(2)  # and woken without an update: the folder served now is read again
        assert (await engine.wake_up()).reloaded_weights
        assert await answers(engine) == on_b
        await engine.shutdown()

    run(main())


def test_requests_in_flight_end_as_a_pause_ends_them_and_new_ones_wait(models: dict[str, Path]) -> None:
    engine = engine_on(models["a"])
    plain = run(answers(engine))
    long_params = replace(greedy(200), ignore_eos=True)

    async def main() -> None:
        outputs: list = []

        async def collect() -> None:
            async for out in engine.generate(PROMPTS[1], long_params):
                outputs.append(out)

        flight = asyncio.create_task(collect())
        while not outputs:
            await asyncio.sleep(0.002)
        await engine.sleep(1)  # abort, vLLM's default
        await asyncio.wait_for(flight, 10)
        assert outputs[-1].finish_reason == "abort" and outputs[-1].num_output_tokens < 200
        steps = engine.engine.num_steps
        late = asyncio.create_task(answers(engine))
        while len(engine._parked) < 1:  # it came, and waits outside the engine
            await asyncio.sleep(0.002)
        stats = await engine.stats()
        assert stats.num_running == stats.num_waiting == 0 and engine.engine.num_steps == steps
        await engine.wake_up()
        assert await asyncio.wait_for(late, 30) == plain
        waited: list = []

        async def to_the_end() -> None:
            async for out in engine.generate(PROMPTS[1], replace(greedy(60), ignore_eos=True)):
                waited.append(out)

        finishing = asyncio.create_task(to_the_end())
        while not waited:
            await asyncio.sleep(0.002)
        await engine.sleep(2, "wait")
        assert finishing.done() and waited[-1].finish_reason == "length" and waited[-1].num_output_tokens == 60
        await engine.wake_up()
        await engine.shutdown()

    run(main())


def test_calls_that_do_not_fit_are_refused_and_repeats_change_nothing(models: dict[str, Path]) -> None:
    engine = engine_on(models["a"])

    async def main() -> None:
        for level, mode, param in ((3, "abort", "level"), (0, "abort", "level"), (1, "keep", "mode")):
            with pytest.raises(InvalidRequestError) as refused:
                await engine.sleep(level, mode)
            assert refused.value.param == param and not engine.is_sleeping and not engine.is_paused
        assert (await engine.wake_up()).changed == ()  # awake already: vLLM's no-op
        with pytest.raises(InvalidRequestError) as refused:
            await engine.wake_up(["gpu"])
        assert refused.value.param == "tags"
        await engine.sleep(1)
        again = await engine.sleep(1)
        assert again.changed == () and again.sleeping == ("weights", "kv_cache")
        with pytest.raises(SleepStateError) as conflict:
            await engine.sleep(2)
        assert conflict.value.code == "already_sleeping" and engine.sleep_level == 1
        with pytest.raises(SleepStateError) as conflict:
            await engine.resume()
        assert conflict.value.code == "engine_asleep"
        await engine.wake_up(["kv_cache"])  # at level 1 either part may wake first
        assert engine.sleeping_tags == ("weights",) and (await engine.wake_up(["kv_cache"])).changed == ()
        await engine.wake_up()
        await engine.pause("abort")  # paused by its caller before the sleep: still paused after the wake-up
        await engine.sleep(1)
        await engine.wake_up()
        assert engine.is_paused and not engine.is_sleeping
        await engine.resume()
        await engine.sleep(1)
        await engine.pause("wait")  # and paused while asleep: the same
        await engine.wake_up()
        assert engine.is_paused
        await engine.resume()
        assert not engine.is_paused
        await engine.shutdown()

    run(main())
    simulated = make_engine()
    with pytest.raises(InvalidRequestError, match="simulated"):
        run(simulated.sleep(1))
    run(simulated.shutdown())


async def sleep_round_trip(engine: AsyncEngine, draft: TorchModelRunner | None, rank_kv: int) -> None:
    before = await answers(engine)
    change = await engine.sleep(2)
    if draft is None:  # each rank holds its half of the heads: both halves were freed
        assert change.released_bytes["kv_cache"] == 2 * rank_kv
    else:
        assert set(weight_bytes(draft)) == {0} and draft.kv_cache.untyped_storage().nbytes() == 0
        assert change.released_bytes["kv_cache"] == rank_kv + draft._kv_shape[0].numel() * 4  # type: ignore[index]
    assert (await engine.wake_up()).reloaded_weights
    assert await answers(engine) == before
    await engine.shutdown()


def test_two_ranks_and_a_draft_model_sleep_with_the_engine(models: dict[str, Path]) -> None:
    for options in ({"tensor_parallel_size": 2},
                    {"speculative": SpeculativeConfig(model=str(models["draft"]), num_speculative_tokens=2)}):
        engine = engine_on(models["a"], **options)
        draft: TorchModelRunner | None = getattr(engine.engine.scheduler.drafter, "runner", None)
        run(sleep_round_trip(engine, draft, runner_of(engine).kv_cache.untyped_storage().nbytes()))


def test_level_2_drops_4_bit_weights_held_as_buffers(models: dict[str, Path], tmp_path: Path) -> None:
    from engine.model.int4_linear import Int4Linear
    from engine.quantize_checkpoint import quantize_checkpoint

    engine = engine_on(quantize_checkpoint(models["a"], tmp_path / "a-int4", "int4", group_size=16))
    runner = runner_of(engine)
    packed = sum(m.qweight.untyped_storage().nbytes() for m in runner.model.modules() if isinstance(m, Int4Linear))
    assert packed > 0

    async def main() -> None:
        before = await answers(engine)
        change = await engine.sleep(2)
        assert all(m.qweight.untyped_storage().nbytes() == 0 for m in runner.model.modules()
                   if isinstance(m, Int4Linear))
        assert change.released_bytes["weights"] > packed  # the packed weights, their scales, the rest
        assert (await engine.wake_up()).reloaded_weights
        assert await answers(engine) == before
        await engine.shutdown()

    run(main())
