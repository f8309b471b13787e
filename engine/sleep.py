"""Sleep mode, vLLM's: an RL trainer that shares the GPU with its rollout engine (verl, OpenRLHF colocated)
puts the engine to sleep while it trains and wakes it for the next rollout round. The sleep half of
AsyncEngine (its base class, over the pause half: engine/pause.py); the runner releases the memory
(engine/runner_sleep.py).

- `sleep(level, mode)`: generation pauses first as `pause(mode)` pauses it (abort, vLLM's default: the
  requests in flight end with finish_reason "abort"; wait: they finish first), every cached prefix is
  forgotten, then the runner releases its KV cache and its weights: level 1 keeps the weights in host
  memory, level 2 drops them (new ones come by `update_weights` once the weights are awake again).
- `wake_up(tags)`: "weights", "kv_cache", or both (the default), weights first, as verl wakes them: the
  weights, their update, then the KV cache. Once both are awake the engine resumes, unless it was paused
  before it slept (or while). At level 2, weights no update has filled by then are reloaded from the
  folder served: an engine never answers from uninitialised memory (vLLM would).

Requests that arrive while the engine sleeps wait until it wakes, in order, as during a pause (vLLM's sleep
pauses its scheduler too); its health, /v1/models and /tokenize answer as ever. As in vLLM, sleeping at
the level the engine sleeps at, or waking what is awake, changes nothing (a trainer's retry is safe).
What cannot be done is a SleepStateError (a 409 over HTTP): another level while asleep, the KV cache
before the weights at level 2, `resume` while asleep, and a weight update while the weights sleep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.pause import EnginePause
from engine.sampling_params import InvalidRequestError
from engine.weight_updates import EngineBusyError, WeightsLostError

if TYPE_CHECKING:
    from engine.pause import PauseMode

SLEEP_LEVELS = (1, 2)
SLEEP_MODES = ("abort", "wait")  # `keep` would hold requests on KV that sleep discards
MEMORY_TAGS = ("weights", "kv_cache")  # in the order they wake


class SleepStateError(RuntimeError):
    """The call does not fit what sleeps now (a 409); `code` names the case."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SleepChange:
    """What a sleep or wake-up call did, and where the engine stands after it."""

    level: int  # the level the engine sleeps at (0: awake)
    sleeping: tuple[str, ...]  # the memory tags asleep now
    changed: tuple[str, ...]  # the tags this call put to sleep or woke (none: it changed nothing)
    released_bytes: dict[str, int] = field(default_factory=dict)  # sleep: by tag, and kv_cache_host: the host tier's
    reloaded_weights: bool = False  # wake-up: stale weights reloaded from the folder served

    def as_json(self) -> dict[str, Any]:
        """The HTTP answer (engine/server/sleep_endpoints.py), also the gateway's for an engine in its process."""
        body: dict[str, Any] = {"status": "sleeping" if self.sleeping else "awake", "is_sleeping": bool(self.sleeping),
                                "level": self.level, "sleeping": list(self.sleeping), "changed": list(self.changed)}
        if self.released_bytes:
            body["released_bytes"] = self.released_bytes
        if self.reloaded_weights:
            body["reloaded_weights"] = True
        return body


class EngineSleep(EnginePause):
    """Needs AsyncEngine's `_call` (through EnginePause)."""

    def _init_sleep(self) -> None:
        self._sleep_level = 0
        self._sleeping: set[str] = set()
        self._resume_on_wake = False  # the sleep paused the engine: the last wake-up resumes it

    @property
    def is_sleeping(self) -> bool:
        return bool(self._sleeping)

    @property
    def sleep_level(self) -> int:
        return self._sleep_level

    @property
    def sleeping_tags(self) -> tuple[str, ...]:
        return tuple(tag for tag in MEMORY_TAGS if tag in self._sleeping)

    def sleep_state(self) -> SleepChange:
        return SleepChange(self._sleep_level, self.sleeping_tags, ())

    async def sleep(self, level: int = 1, mode: str = "abort") -> SleepChange:
        """InvalidRequestError for a level or mode there is not (or a simulated runner); SleepStateError while
        asleep at another level."""
        if level not in SLEEP_LEVELS:
            raise InvalidRequestError("'level' must be 1 (weights kept in host memory) or 2 (weights dropped)",
                                      "level")
        if mode not in SLEEP_MODES:
            raise InvalidRequestError(f"'mode' must be one of {', '.join(SLEEP_MODES)} (a request kept by `keep` "
                                      "would need the KV cache that sleep releases)", "mode")
        if not hasattr(self.engine.runner, "sleep_memory"):
            raise InvalidRequestError("this engine's runner holds no memory to release (a simulated one)", "level")
        async with self._admin_lock():
            if self._sleep_level and level != self._sleep_level:
                raise SleepStateError(f"the engine sleeps at level {self._sleep_level} already: wake it up "
                                      f"(POST /wake_up) before it sleeps at level {level}", "already_sleeping")
            awake = tuple(tag for tag in MEMORY_TAGS if tag not in self._sleeping)
            if not awake:
                return self.sleep_state()
            if not self._sleeping:  # it was awake: generation pauses first (a pause already held stays held)
                self._resume_on_wake = not self.is_paused
                await EnginePause.pause(self, mode, clear_cache=False)  # type: ignore[arg-type]
            released = await self._call(lambda: self._release(level, awake))
            self._sleep_level = level
            self._sleeping.update(awake)
            return SleepChange(level, self.sleeping_tags, awake, released)

    async def wake_up(self, tags: Sequence[str] | None = None) -> SleepChange:
        """`tags`: which memory wakes (None: all). InvalidRequestError for an unknown tag; SleepStateError
        for the KV cache before the weights at level 2."""
        wanted = MEMORY_TAGS if tags is None else tuple(tags)
        if not wanted or any(tag not in MEMORY_TAGS for tag in wanted):
            raise InvalidRequestError(f"'tags' must name {' or '.join(MEMORY_TAGS)} (or be left out: both)", "tags")
        async with self._admin_lock():
            waking = tuple(tag for tag in MEMORY_TAGS if tag in wanted and tag in self._sleeping)
            if not waking:
                return self.sleep_state()
            if self._sleep_level == 2 and "weights" in self._sleeping and "weights" not in waking:
                raise SleepStateError("at level 2 the weights wake first (POST /wake_up?tags=weights), take new "
                                      "values (POST /update_weights_from_disk), then the KV cache wakes",
                                      "weights_first")
            last = set(waking) == self._sleeping
            reloaded = await self._call(lambda: self._restore(waking, refresh=last), fatal=(WeightsLostError,))
            self._sleeping.difference_update(waking)
            if not self._sleeping:
                self._sleep_level = 0
                if self._resume_on_wake:
                    await EnginePause.resume(self)
            return SleepChange(self._sleep_level, self.sleeping_tags, waking, reloaded_weights=reloaded)

    # ---- the pause half, asleep ---------------------------------------------------------------

    async def pause(self, mode: PauseMode = "abort", clear_cache: bool = True) -> None:
        if self._sleeping:  # paused by its caller while asleep: it stays paused after the wake-up
            self._resume_on_wake = False
        await super().pause(mode, clear_cache)

    async def resume(self) -> None:
        if self._sleeping:
            raise SleepStateError(f"the engine is asleep ({', '.join(self.sleeping_tags)}): wake it up "
                                  "(POST /wake_up), which resumes it", "engine_asleep")
        await super().resume()

    def _check_update_allowed(self) -> None:
        if "weights" in self._sleeping:
            raise SleepStateError("the weights are asleep: wake them first (POST /wake_up?tags=weights), then "
                                  "load new ones", "weights_asleep")

    # ---- on the engine thread -----------------------------------------------------------------

    def _runners(self) -> list[Any]:
        """The target model's runner, and a draft model's (engine/draft_model.py), which sleeps with it."""
        draft = getattr(getattr(self.engine.scheduler, "drafter", None), "runner", None)
        return [self.engine.runner, *([draft] if hasattr(draft, "sleep_memory") else [])]

    def _release(self, level: int, tags: tuple[str, ...]) -> dict[str, int]:
        if self.engine.has_unfinished():  # the pause has drained it; a request here would lose its KV
            raise EngineBusyError("requests are in flight: the engine cannot sleep under them")
        if "kv_cache" in tags:
            self.engine.block_manager.reset_prefix_cache()
            drafter = getattr(self.engine.scheduler, "drafter", None)
            if (draft_blocks := getattr(drafter, "block_manager", None)) is not None:
                draft_blocks.reset_prefix_cache()
        released: dict[str, int] = {}
        for runner in self._runners():
            for tag, freed in runner.sleep_memory(level, tags).items():
                released[tag] = released.get(tag, 0) + freed
        return released

    def _restore(self, tags: tuple[str, ...], refresh: bool) -> bool:
        """Wakes `tags`; with `refresh` (the last wake-up), reloads stale weights (WeightsLostError, fatal, if
        that fails: the parameters hold nothing that can be served)."""
        reloaded = False
        for runner in self._runners():
            runner.wake_memory(tags)
            if refresh:
                try:
                    reloaded = runner.refresh_weights() or reloaded
                except Exception as exc:
                    raise WeightsLostError(f"reloading the weights of {runner.model_dir} after a level 2 sleep "
                                           f"failed: {exc}") from exc
        return reloaded
