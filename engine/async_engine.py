"""AsyncEngine: one LLMEngine served to asyncio, the in-process twin of the HTTP server.

The LLMEngine is single-threaded, so it lives on ONE background thread that owns every mutation:
requests, aborts and pin operations are queued to that thread as commands and applied between
steps; step outputs flow back to per-request asyncio queues with `loop.call_soon_threadsafe`.
The thread sleeps on a condition when there is nothing to do (torch releases the GIL while a
step runs, so the event loop keeps serving). If a step raises, the instance is dead: every
in-flight request fails with EngineDeadError instead of hanging, and so does every later call."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from engine.hints import NO_HINTS, SchedulingHints
from engine.llm_engine import EngineStats, LLMEngine
from engine.lora_registry import LoRAAdapter
from engine.outputs import RequestOutput, RequestTiming
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.sequence import Sequence as EngineSequence
from engine.sleep import EngineSleep

if TYPE_CHECKING:
    import torch

    from engine.audio_inputs import AudioInput
    from engine.image_inputs import ImageInput

T = TypeVar("T")
# How long the thread naps when requests are pending but none could be scheduled (memory is full
# of pins that have not expired yet): long enough not to spin, short enough not to be noticed.
_STALL_WAIT_S = 0.005
_MAX_IDLE_WAIT_S = 60.0
log = logging.getLogger("pitstop.engine")


class EngineDeadError(RuntimeError):
    """The step loop is not running (it crashed or was shut down): a 503, not a client error."""


class SessionNotFoundError(LookupError):
    """No finished turn is known for this session id."""


class TokenizerLike(Protocol):
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = True) -> str: ...


@dataclass
class _Command:
    apply: Callable[[], None]  # runs on the engine thread; reports its own result or error
    fail: Callable[[BaseException], None]  # the engine died before it could run


class _RequestStream:
    """The asyncio side of one request: a queue on the consumer's loop, fed from the engine thread."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.seq: EngineSequence | None = None  # the engine's, read on its thread for the finished output's timing


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def _settle(future: asyncio.Future, result: object = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller gave up (cancelled) in the meantime
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class AsyncEngine(EngineSleep):
    def __init__(self, engine: LLMEngine, vocab_size: int | None = None) -> None:
        self.engine = engine
        self.tokenizer: TokenizerLike | None = engine.tokenizer
        # Prompt token ids outside the vocabulary would crash the step (and with it every request).
        self.vocab_size = vocab_size
        self._cond = threading.Condition()
        self._commands: list[_Command] = []
        self._stopping = False
        self._dead: EngineDeadError | None = None
        self._thread: threading.Thread | None = None
        self._streams: dict[str, _RequestStream] = {}  # engine thread only
        self._init_pause()
        self._init_sleep()

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self.engine.config.max_model_len

    @property
    def is_healthy(self) -> bool:
        return self._dead is None and not self._stopping

    @property
    def dead_reason(self) -> str | None:
        return str(self._dead) if self._dead is not None else None

    async def start(self) -> None:
        self._ensure_started()
        if self.engine.can_constrain:
            # llguidance's view of the vocabulary takes about a second per 32k tokens: built now, in the
            # background, the first structured request does not wait for it (one waiting takes its lock).
            threading.Thread(target=self._warm_grammars, name="pitstop-grammars", daemon=True).start()

    def _warm_grammars(self) -> None:
        try:
            self.engine.grammars()
        except Exception:  # the first structured request will build it, and say what is wrong
            log.exception("building the grammar compiler in the background failed")

    def _ensure_started(self) -> None:
        with self._cond:
            if self._thread is None and self._dead is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="pitstop-engine", daemon=True)
                self._thread.start()

    async def shutdown(self) -> None:
        """Stop the step loop; in-flight requests fail with EngineDeadError. Idempotent."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify()
        if thread is None:
            self._die(EngineDeadError("the engine was shut down"))
        else:
            await asyncio.to_thread(thread.join)

    # ---- requests -----------------------------------------------------------------------------

    def validate_request(self, prompt_token_ids: Sequence[int], pin_ttl_s: float | None = None,
                         params: SamplingParams | None = None) -> None:
        """The checks `add_request` makes, done on the caller's side so a server can answer 400
        before it commits to a streaming 200."""
        self.engine.validate_request(list(prompt_token_ids), pin_ttl_s, self.vocab_size, params)

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise InvalidRequestError("this engine has no tokenizer: send prompt token ids", "prompt")
        return self.tokenizer.encode(prompt)

    async def generate(self, prompt: str | Sequence[int], params: SamplingParams, request_id: str | None = None,
                       priority: float = 0.0, session_id: str | None = None,
                       pin_ttl_s: float | None = None,
                       hints: SchedulingHints = NO_HINTS,
                       prompt_leader: str | None = None, lora: str | None = None,
                       images: list[ImageInput] | None = None,
                       prompt_embeds: torch.Tensor | None = None,
                       audio: AudioInput | None = None) -> AsyncIterator[RequestOutput]:
        """Yields one RequestOutput per step that produced a token, the last one `finished`.
        Stopping the iteration early (break, aclose, cancellation) aborts the request. `lora`: a loaded
        adapter's name (engine/lora_registry.py); `images`: the prompt's (engine/image_inputs.py);
        `prompt_embeds`: rows in place of the prompt's placeholder ids' embeddings (engine/prompt_embeds.py);
        `audio`: a Whisper model's window (engine/audio_inputs.py)."""
        prompt_token_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.validate_request(prompt_token_ids, pin_ttl_s, params)
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        stream = _RequestStream(request_id, asyncio.get_running_loop())

        def add() -> None:
            try:
                stream.seq = self.engine.add_request(request_id, prompt_token_ids, params, priority=priority,
                                                     prompt_leader=prompt_leader, lora=lora, images=images,
                                                     prompt_embeds=prompt_embeds, audio=audio,
                                                     session_id=session_id, pin_ttl_s=pin_ttl_s, hints=hints)
            except Exception as exc:  # e.g. a duplicate request id: the caller's error, not the engine's
                self._deliver([(stream, exc)])
            else:
                self._streams[request_id] = stream

        self._submit(_Command(add, lambda exc: self._deliver([(stream, exc)])), request_id)
        done = False
        try:
            while not done:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = item.finished
                yield item
        finally:
            if not done:
                self._abort(request_id)

    def _abort(self, request_id: str) -> None:
        if self._unpark(request_id):  # it came during a pause and never reached the engine
            return

        def abort() -> None:
            self._streams.pop(request_id, None)
            self.engine.abort(request_id)

        with suppress(EngineDeadError):  # nothing runs any more: nothing to abort
            self._submit(_Command(abort, lambda exc: None))

    # ---- sessions and stats -------------------------------------------------------------------

    async def pin_session(self, session_id: str, ttl_s: float) -> int:
        """Pin what is still cached of the session's last turn; returns the blocks pinned."""

        def pin() -> int:
            if self.engine.session_info(session_id) is None:
                raise SessionNotFoundError(session_id)
            return self.engine.pin_session(session_id, ttl_s)

        return await self._call(pin)

    async def extend_session_pin(self, session_id: str, ttl_s: float) -> bool:
        return await self._call(lambda: self.engine.extend_session_pin(session_id, ttl_s))

    async def unpin_session(self, session_id: str) -> bool:
        return await self._call(lambda: self.engine.unpin_session(session_id))

    async def session_info(self, session_id: str) -> dict | None:
        return await self._call(lambda: self.engine.session_info(session_id))

    @property
    def lora_names(self) -> list[str]:
        """The adapters loaded now, in the order they were (a read from any thread)."""
        return list(self.engine.loras)

    async def add_lora(self, name: str, path: str) -> LoRAAdapter:
        """Serve the adapter folder at `path` as `name`: its files are read off the engine thread
        (InvalidRequestError or LoRAError say what is wrong), then it joins between two steps."""
        self.engine.check_lora_name(name)
        weights = await asyncio.to_thread(self.engine.read_lora, path)
        return await self._call(lambda: self.engine.add_lora(name, path, weights))

    async def remove_lora(self, name: str) -> None:
        """Stop serving `name` (LoRANotFoundError if it is not loaded); requests running with it finish."""
        await self._call(lambda: self.engine.remove_lora(name))

    async def stats(self) -> EngineStats:
        return await self._call(self.engine.stats)

    async def _call(self, fn: Callable[[], T], fatal: tuple[type[BaseException], ...] = ()) -> T:
        """Run `fn` on the engine thread between steps and await its result; a `fatal` error it raises
        stops the step loop too (the instance is dead) after the caller has it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def reply(result: object = None, error: BaseException | None = None) -> None:
            with suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, result, error)

        def apply() -> None:
            try:
                result = fn()
            except fatal as exc:
                reply(error=exc)
                raise
            except Exception as exc:
                reply(error=exc)
            else:
                reply(result)

        self._submit(_Command(apply, lambda exc: reply(error=exc)))
        return await future

    # ---- the engine thread --------------------------------------------------------------------

    def _submit(self, command: _Command, request_id: str | None = None) -> None:
        """`request_id`: the command adds that request, which a pause holds back (engine/pause.py)."""
        self._ensure_started()
        with self._cond:
            if self._dead is not None or self._stopping:
                raise EngineDeadError(self.dead_reason or "the engine is shutting down")
            if request_id is not None and self._park(request_id, command):
                return
            self._commands.append(command)
            self._cond.notify()

    def _next_commands(self, stalled: bool) -> list[_Command] | None:
        """Wait for work: commands, schedulable requests, a pin deadline or a stop (None)."""
        with self._cond:
            if not (self._commands or self._stopping):
                if stalled:
                    self._cond.wait(_STALL_WAIT_S)
                elif self._frozen or not self.engine.has_unfinished():
                    self._cond.wait(self._idle_timeout())
            if self._stopping:
                return None
            commands, self._commands = self._commands, []
            return commands

    def _idle_timeout(self) -> float | None:
        # Pins expire inside `step`; an idle engine wakes at the next deadline to expire them, so
        # stats and session info stay true. A virtual clock has no deadlines to wait for.
        deadline = self.engine.next_pin_deadline()
        if deadline is None or self.engine.clock.virtual:
            return None
        # Bounded: a far deadline would overflow the timed wait, and waking once a minute is free.
        return min(max(0.0, deadline - self.engine.clock.now()) + 0.001, _MAX_IDLE_WAIT_S)

    def _run(self) -> None:
        error = EngineDeadError("the engine was shut down")
        try:
            stalled = False
            while (commands := self._next_commands(stalled)) is not None:
                for command in commands:
                    command.apply()
                if self._frozen or not self.engine.has_unfinished():
                    self.engine.expire_pins()
                    self._wake_drain_waiters()
                    stalled = False
                    continue
                steps_before = self.engine.num_steps
                self._dispatch(self.engine.step())
                self._wake_drain_waiters()
                stalled = self.engine.num_steps == steps_before  # nothing could be scheduled
        except Exception as exc:
            log.exception("the engine step loop crashed; this instance now answers 503")
            error = EngineDeadError(f"the engine step loop crashed: {exc!r}")
            error.__cause__ = exc
        finally:
            self._die(error)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        items = []
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
                if (seq := stream.seq) is not None:  # its times, while this thread still owns the sequence
                    output.timing = RequestTiming(seq.arrival_time, seq.first_scheduled_time, seq.first_token_time,
                                                  seq.finish_time, seq.num_preemptions)
            items.append((stream, output))
        self._deliver(items)

    def _deliver(self, items: list[tuple[_RequestStream, RequestOutput | BaseException]]) -> None:
        """Hand items to their consumers' loops: one wake-up per loop per step, not per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for stream, item in items:
            by_loop[stream.loop].append((stream, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(stream.queue, item) for stream, item in batch])
            except RuntimeError:  # that loop is closed: nobody will read these, stop computing them
                for stream, _ in batch:
                    if self._streams.pop(stream.request_id, None) is not None and self._dead is None:
                        self.engine.abort(stream.request_id)

    def _die(self, error: EngineDeadError) -> None:
        """Mark the instance dead and fail everything that is waiting on it."""
        with self._cond:
            if self._dead is None:
                self._dead = error
            commands, self._commands = [*self._commands, *self._parked.values()], []
            self._parked.clear()
        for command in commands:
            command.fail(EngineDeadError(str(error)))
        waiters, self._drain_waiters = self._drain_waiters, []
        for settle in waiters:
            settle(EngineDeadError(str(error)))
        streams, self._streams = list(self._streams.values()), {}
        self._deliver([(stream, EngineDeadError(str(error))) for stream in streams])
        try:  # a disk tier's blocks kept for the next instance, its files closed; worker processes stopped
            self.engine.close(clean=error.__cause__ is None)
        except Exception:
            log.exception("closing the engine failed")
