"""AsyncEngine: the step loop on its own thread, driven from asyncio, with fake runners."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.async_engine import AsyncEngine, EngineDeadError, SessionNotFoundError
from engine.byte_tokenizer import ByteTokenizer
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from tests.engine.fakes import CountingRunner
from tests.engine.serving import SlowRunner


def make_engine(runner: CountingRunner | None = None, tokenizer: ByteTokenizer | None = None,
                num_blocks: int = 64) -> AsyncEngine:
    config = EngineConfig(block_size=4, num_blocks=num_blocks, max_model_len=200, max_num_seqs=8,
                          max_num_batched_tokens=64)
    return AsyncEngine(LLMEngine(config, runner or SlowRunner(), tokenizer=tokenizer), vocab_size=128)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


async def drain(engine: AsyncEngine, prompt, max_tokens: int = 5, **kwargs) -> list:
    return [out async for out in engine.generate(prompt, greedy(max_tokens), **kwargs)]


async def wait_idle(engine: AsyncEngine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = await engine.stats()
        if stats.num_running == 0 and stats.num_waiting == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine still has requests")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_generate_streams_until_finished_on_the_engine_thread():
    runner = SlowRunner()
    engine = make_engine(runner)

    async def main():
        await engine.start()
        outs = await drain(engine, [1, 2, 3, 4, 5], max_tokens=6)
        await engine.shutdown()
        return outs

    outs = run(main())
    assert [o.num_output_tokens for o in outs] == [1, 2, 3, 4, 5, 6]
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert not any(o.finished for o in outs[:-1])
    assert runner.thread_ids and threading.get_ident() not in runner.thread_ids


def test_concurrent_requests_and_text_from_the_tokenizer():
    engine = make_engine(tokenizer=ByteTokenizer())

    async def main():
        results = await asyncio.gather(*(drain(engine, f"prompt {i}", max_tokens=4) for i in range(6)))
        stats = await engine.stats()
        await engine.shutdown()
        return results, stats

    results, stats = run(main())
    for outs in results:
        assert outs[-1].finished and outs[-1].num_output_tokens == 4
        assert "".join(o.text_delta for o in outs) == ByteTokenizer().decode([t for o in outs for t in o.new_token_ids])
    assert stats.num_running == stats.num_waiting == 0 and stats.generation_tokens == 24


def test_consumer_that_stops_iterating_aborts_its_request():
    engine = make_engine(SlowRunner(step_s=0.002))

    async def main():
        async for _ in engine.generate([1, 2, 3], greedy(150)):
            break  # leaves the async for: the generator is closed, the request aborted
        await wait_idle(engine)
        stream = engine.generate([4, 5, 6], greedy(150))
        await anext(stream)
        await stream.aclose()
        await wait_idle(engine)
        stats = await engine.stats()
        await engine.shutdown()
        return stats

    stats = run(main())
    assert stats.generation_tokens < 150


def test_cancelled_consumer_aborts_its_request():
    engine = make_engine(SlowRunner(step_s=0.002))

    async def consume():
        async for _ in engine.generate([1, 2, 3], greedy(150)):
            pass

    async def main():
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(engine)
        await engine.shutdown()

    run(main())


def test_a_crashing_step_fails_in_flight_requests_and_marks_the_engine_dead():
    engine = make_engine(SlowRunner(step_s=0.001, crash_at=4))

    async def main():
        results = await asyncio.gather(drain(engine, [1, 2, 3], 50), drain(engine, [7, 8], 50),
                                       return_exceptions=True)
        assert all(isinstance(r, EngineDeadError) for r in results), results
        assert "device lost" in str(results[0])
        assert not engine.is_healthy and "device lost" in engine.dead_reason
        with pytest.raises(EngineDeadError):
            await drain(engine, [1, 2, 3])
        with pytest.raises(EngineDeadError):
            await engine.stats()
        with pytest.raises(EngineDeadError):
            await engine.pin_session("s", 10)
        await engine.shutdown()  # still fine after a crash

    run(main())


def test_shutdown_fails_in_flight_requests_cleanly():
    engine = make_engine(SlowRunner(step_s=0.002))

    async def main():
        task = asyncio.create_task(drain(engine, [1, 2, 3], 150))
        await asyncio.sleep(0.05)
        await engine.shutdown()
        with pytest.raises(EngineDeadError):
            await task
        assert not engine.is_healthy

    run(main())


def test_invalid_requests_raise_client_errors_and_leave_the_engine_healthy():
    engine = make_engine(SlowRunner(step_s=0.002))

    async def main():
        with pytest.raises(InvalidRequestError):
            await drain(engine, list(range(100)) * 2)  # longer than the context
        with pytest.raises(InvalidRequestError):
            await drain(engine, [1, 500])  # outside the vocabulary
        with pytest.raises(InvalidRequestError):
            await drain(engine, [])
        with pytest.raises(InvalidRequestError):
            await drain(engine, [1, 2], session_id="s", pin_ttl_s=-1)
        with pytest.raises(InvalidRequestError, match="no tokenizer"):
            await drain(engine, "text")
        first = engine.generate([1, 2, 3], greedy(100), request_id="same")
        await anext(first)
        with pytest.raises(InvalidRequestError, match="already in flight"):
            await drain(engine, [1, 2, 3], request_id="same")
        await first.aclose()
        assert engine.is_healthy
        assert len(await drain(engine, [1, 2, 3], 3)) == 3
        await engine.shutdown()

    run(main())


def test_session_pins_through_the_engine_thread():
    engine = make_engine()

    async def main():
        with pytest.raises(SessionNotFoundError):
            await engine.pin_session("nobody", 10)
        assert await engine.session_info("nobody") is None
        await drain(engine, list(range(1, 18)), 3, session_id="agent")
        pinned = await engine.pin_session("agent", 30)
        assert pinned == 4  # 17 prompt + 3 output tokens -> 20 tokens, 4 full blocks of 4 (the last one unfinished)
        info = await engine.session_info("agent")
        assert info["pinned_blocks"] == pinned and 29 < info["pin_ttl_remaining_s"] <= 30
        assert await engine.extend_session_pin("agent", 60)
        assert not await engine.extend_session_pin("nobody", 60)
        assert (await engine.stats()).blocks.pinned == pinned
        assert await engine.unpin_session("agent")
        assert not await engine.unpin_session("agent")
        assert (await engine.stats()).blocks.pinned == 0
        await engine.shutdown()

    run(main())


def test_pins_expire_while_the_engine_is_idle():
    engine = make_engine()

    async def main():
        await drain(engine, list(range(1, 18)), 3, session_id="agent", pin_ttl_s=0.2)
        assert (await engine.stats()).blocks.pinned > 0
        steps = (await engine.stats()).num_steps
        await asyncio.sleep(0.4)
        stats = await engine.stats()
        assert stats.blocks.pinned == 0 and stats.pins.expired == 1
        assert stats.num_steps == steps  # woke for the deadline, ran no step
        await engine.shutdown()

    run(main())


def test_a_pin_deadline_centuries_away_leaves_the_engine_serving(caplog: pytest.LogCaptureFixture):
    """The idle engine waits for its next pin deadline; one past what a timed wait can hold (1e308 s
    overflowed it) once killed the step loop, and every later request got 503."""
    engine = make_engine()

    async def main():
        await drain(engine, list(range(1, 18)), 3, session_id="agent", pin_ttl_s=1e308)
        await asyncio.sleep(0.05)  # the thread is idle, waiting on the far deadline
        outs = await drain(engine, [1, 2, 3], 4)
        assert outs[-1].finished and engine.dead_reason is None
        assert (await engine.stats()).blocks.pinned > 0
        await engine.shutdown()

    run(main())
    assert "crashed" not in caplog.text


def test_a_crashed_step_loop_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture):
    engine = make_engine(CountingRunner())

    async def main():
        await engine.start()
        engine.engine.step = lambda: 1 / 0  # a bug in a step
        with pytest.raises(EngineDeadError, match="ZeroDivisionError"):
            await drain(engine, [1, 2, 3], 2)
        await engine.shutdown()

    with caplog.at_level("ERROR", logger="pitstop.engine"):
        run(main())
    crash = next(r for r in caplog.records if r.name == "pitstop.engine")
    assert "crashed" in crash.getMessage() and crash.exc_info[0] is ZeroDivisionError


def test_outputs_for_a_closed_event_loop_are_dropped_and_the_request_aborted():
    engine = make_engine(SlowRunner(step_s=0.002))

    async def start_and_leave():
        stream = engine.generate([1, 2, 3], greedy(150))
        await anext(stream)
        return stream  # never closed: its loop goes away with it

    asyncio.run(start_and_leave())

    async def check():
        await wait_idle(engine)
        await engine.shutdown()

    run(check())


def test_an_idle_engine_thread_sleeps():
    engine = make_engine()

    async def main():
        await drain(engine, [1, 2, 3], 2)
        cpu = time.process_time()
        await asyncio.sleep(0.3)
        idle_cpu = time.process_time() - cpu
        await engine.shutdown()
        return idle_cpu

    assert run(main()) < 0.05  # a polling loop would burn most of the 0.3 s
