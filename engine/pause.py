"""Pausing generation, vLLM's `/pause` and `/resume`: what an RL trainer does around a weight update, and
the weight update itself (engine/weight_updates.py). The pause half of AsyncEngine (its base class).

Modes, as vLLM names them:
- `abort`: every request in flight ends now, finish_reason "abort", its tokens so far delivered;
- `wait`: the requests in flight run to their end; the pause returns once they have;
- `keep`: the requests in flight stop where they are, KV kept, and go on after `resume`.
Requests that arrive while the engine is paused are accepted and wait, in order, until it resumes (a
client that leaves meanwhile takes its request with it). `clear_cache` (abort and wait) forgets every
cached prefix once the engine is empty."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Literal, TypeVar

from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput, RequestTiming
from engine.weight_updates import WeightsLostError, WeightUpdate, checked_folders, update_weights

if TYPE_CHECKING:
    from engine.async_engine import _Command, _RequestStream

PauseMode = Literal["abort", "wait", "keep"]
PAUSE_MODES: tuple[PauseMode, ...] = ("abort", "wait", "keep")
T = TypeVar("T")


class EnginePause:
    """Needs AsyncEngine's condition, command queue, streams and `_call`."""

    engine: LLMEngine
    _cond: threading.Condition
    _commands: list[_Command]
    _streams: dict[str, _RequestStream]

    if TYPE_CHECKING:
        async def _call(self, fn: Callable[[], T], fatal: tuple[type[BaseException], ...] = ()) -> T: ...

        def _deliver(self, items: list) -> None: ...

    def _init_pause(self) -> None:
        self._pause_mode: PauseMode | None = None
        self._parked: dict[str, _Command] = {}  # requests that came during a pause, by id, in arrival order
        self._drain_waiters: list[Callable[[BaseException | None], None]] = []  # engine thread only
        self._admin_calls: asyncio.Lock | None = None

    @property
    def is_paused(self) -> bool:
        return self._pause_mode is not None

    @property
    def _frozen(self) -> bool:
        """Paused in `keep` mode: the step loop runs no step."""
        return self._pause_mode == "keep"

    def _park(self, request_id: str, command: _Command) -> bool:
        """Under the condition's lock: hold a new request while paused (True), or let it through."""
        if self._pause_mode is None:
            return False
        self._parked[request_id] = command
        return True

    def _unpark(self, request_id: str) -> bool:
        """A parked request's client left: drop it (True), or it was not parked."""
        with self._cond:
            return self._parked.pop(request_id, None) is not None

    async def pause(self, mode: PauseMode = "abort", clear_cache: bool = True) -> None:
        """Returns once the mode holds: the requests in flight ended (abort, wait) or stopped (keep)."""
        assert mode in PAUSE_MODES
        with self._cond:
            self._pause_mode = mode
            self._cond.notify()
        # Run between two steps: after it no step starts while frozen, and nothing in flight is missed.
        await self._call(self._abort_all if mode == "abort" else lambda: None)
        if mode != "keep":
            await self._drained()
            if clear_cache:
                await self.reset_prefix_cache()

    async def resume(self) -> None:
        """Steps run again and the requests that came during the pause start, in the order they came."""
        with self._cond:
            self._pause_mode = None
            self._commands.extend(self._parked.values())
            self._parked.clear()
            self._cond.notify()

    async def reset_prefix_cache(self) -> int:
        """Forget every cached prefix (pins and slower tiers included); returns the blocks forgotten."""
        return await self._call(self.engine.block_manager.reset_prefix_cache)

    async def update_weights(self, model_path: str, abort_all: bool = False,
                             draft_model_path: str | None = None) -> WeightUpdate:
        """New weights from a checkpoint folder of the same model (engine/weight_updates.py), and the draft
        model's from `draft_model_path` in the same pause. A running
        engine is paused for it (its requests finished, or aborted with `abort_all`) and resumed after; one
        paused already stays paused. InvalidRequestError for a folder that will not do, checked before
        anything pauses; EngineBusyError while paused in `keep` mode with requests held."""
        await asyncio.to_thread(checked_folders, self.engine, model_path, draft_model_path)
        async with self._admin_lock():
            self._check_update_allowed()
            paused_here = not self.is_paused
            if paused_here:
                await self.pause("abort" if abort_all else "wait", clear_cache=False)
            try:
                return await self._call(lambda: update_weights(self.engine, model_path, draft_model_path),
                                        fatal=(WeightsLostError,))
            finally:
                if paused_here:
                    await self.resume()

    def _admin_lock(self) -> asyncio.Lock:
        """Held by a weight update, a sleep and a wake-up (engine/sleep.py): one at a time, never interleaved."""
        if self._admin_calls is None:  # made on the loop that serves the engine
            self._admin_calls = asyncio.Lock()
        return self._admin_calls

    def _check_update_allowed(self) -> None:
        """Under the admin lock, before an update: engine/sleep.py refuses one while the weights sleep."""

    # ---- on the engine thread -----------------------------------------------------------------

    def _abort_all(self) -> None:
        """Every request in flight ends with finish_reason "abort" (its clients hear it as their last output)."""
        items = []
        for request_id, stream in list(self._streams.items()):
            seq = stream.seq
            self.engine.abort(request_id)
            del self._streams[request_id]
            if seq is None:
                continue
            output = RequestOutput(request_id, [], "", True, "abort", seq.num_prompt_tokens, seq.num_cached_tokens,
                                   seq.num_output_tokens)
            output.timing = RequestTiming(seq.arrival_time, seq.first_scheduled_time, seq.first_token_time,
                                          self.engine.clock.now(), seq.num_preemptions)
            items.append((stream, output))
        self._deliver(items)

    async def _drained(self) -> None:
        """Returns once the engine has no request: none in flight, none waiting."""
        loop = asyncio.get_running_loop()
        drained: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None = None) -> None:
            def done() -> None:
                if not drained.done():
                    drained.set_result(None) if error is None else drained.set_exception(error)

            with suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting
                loop.call_soon_threadsafe(done)

        def register() -> None:
            self._drain_waiters.append(settle)
            self._wake_drain_waiters()

        await self._call(register)
        await drained

    def _wake_drain_waiters(self) -> None:
        if self._drain_waiters and not self.engine.has_unfinished():
            waiters, self._drain_waiters = self._drain_waiters, []
            for settle in waiters:
                settle(None)
