"""The rest of an RL trainer's calls to its rollout engines, for the master key, each sent at once to every
Pitstop engine of a model (gateway/engine_broadcast.py; the weights themselves: gateway/weight_admin.py):

    POST /pause {"model", "mode"?: "abort"|"wait"|"keep", "clear_cache"?: true}    (vLLM's /pause)
    POST /resume {"model"}
    GET  /is_paused?model=M
    POST /sleep {"model", "level"?: 1|2, "mode"?: "abort"|"wait"}                   (vLLM's sleep mode)
    POST /wake_up {"model", "tags"?: ["weights", "kv_cache"]}
    GET  /is_sleeping?model=M
    POST /reset_prefix_cache {"model"}

Each engine answers as its own endpoint does (engine/server/weight_endpoints.py, sleep_endpoints.py: over
HTTP they need `--allow-weight-updates` and `--enable-sleep-mode`); the answer lists them, and is a 502
naming those that failed or could not be reached. `is_paused` and `is_sleeping` are true while any engine
is. From a pause or a sleep until the resume or the wake-up of the last memory, the gateway holds the
model's new requests itself (and those of the LoRA adapters on its engines), rather than sending them to
engines that would hold them (gateway/model_holds.py says why); a resume or wake-up that an engine refuses
(a 4xx: still asleep, the KV cache before the weights) leaves the hold as it was, an engine that cannot be
reached does not keep it. Paused and sleeping engines stay healthy for /readyz and are never marked
failed: they answer, and will serve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.async_engine import AsyncEngine
from engine.pause import PAUSE_MODES
from engine.server.errors import bad_request
from engine.server.json_body import read_json
from engine.sleep import MEMORY_TAGS, SLEEP_LEVELS, SLEEP_MODES
from gateway.engine_broadcast import AdminCall, EngineOf, Reached, answer, broadcast, engines_of, models_on
from gateway.key_admin import require_master
from gateway.model_holds import ModelHolds
from gateway.state import GatewayState


def _holds(state: GatewayState) -> ModelHolds:
    return state.dispatcher.holds


async def _posted(request: Request, doing: str) -> tuple[GatewayState, dict[str, Any], str]:
    """The master key's JSON body and the model it names."""
    state: GatewayState = request.app.state.pitstop
    require_master(state, request, doing)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return state, body, _model(body.get("model"))


def _model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must name a model of the gateway", "model")
    return model


def _choice(body: dict[str, Any], name: str, choices: tuple, default: object) -> Any:
    value = body.get(name, default)
    if value not in choices or isinstance(value, bool) != isinstance(default, bool):
        raise bad_request(f"'{name}' must be one of {', '.join(map(str, choices))}", name)
    return value


def _engines(state: GatewayState, model: str, doing: str) -> tuple[list[EngineOf], list[str]]:
    engines = engines_of(state, model, doing)
    return engines, models_on(state, engines)


def _followed(reached: list[Reached]) -> bool:
    return not any(r.refused for r in reached)


async def pause(request: Request) -> JSONResponse:
    state, body, model = await _posted(request, "pausing engines")
    mode = _choice(body, "mode", PAUSE_MODES, "abort")
    clear_cache = _choice(body, "clear_cache", (True, False), True)
    engines, models = _engines(state, model, "pause")
    _holds(state).pause(models)  # before the engines: nothing new is sent to them meanwhile

    async def local(engine: AsyncEngine) -> dict[str, Any]:
        await engine.pause(mode, clear_cache)
        return {"status": "paused"}

    reached = await broadcast(engines, AdminCall(local, "POST", "/pause", {
        "mode": mode, "clear_cache": "true" if clear_cache else "false"}))
    return answer(model, reached, "did not pause", "pause_failed", mode=mode)


async def resume(request: Request) -> JSONResponse:
    state, _, model = await _posted(request, "resuming engines")
    engines, models = _engines(state, model, "resume")

    async def local(engine: AsyncEngine) -> dict[str, Any]:
        await engine.resume()
        return {"status": "resumed"}

    reached = await broadcast(engines, AdminCall(local, "POST", "/resume"))
    if _followed(reached):
        _holds(state).resume(models)
    return answer(model, reached, "did not resume", "resume_failed")


async def sleep(request: Request) -> JSONResponse:
    state, body, model = await _posted(request, "putting engines to sleep")
    level = _choice(body, "level", SLEEP_LEVELS, 1)
    mode = _choice(body, "mode", SLEEP_MODES, "abort")
    engines, models = _engines(state, model, "put to sleep")
    _holds(state).sleep(models)

    async def local(engine: AsyncEngine) -> dict[str, Any]:
        return (await engine.sleep(level, mode)).as_json()

    reached = await broadcast(engines, AdminCall(local, "POST", "/sleep", {"level": str(level), "mode": mode}))
    return answer(model, reached, "did not go to sleep", "sleep_failed", level=level)


async def wake_up(request: Request) -> JSONResponse:
    state, body, model = await _posted(request, "waking engines up")
    tags = body.get("tags")
    if tags is not None and (not isinstance(tags, list) or not tags or any(t not in MEMORY_TAGS for t in tags)):
        raise bad_request(f"'tags' must be a list of {' and '.join(MEMORY_TAGS)} (or left out: both)", "tags")
    engines, models = _engines(state, model, "wake up")

    async def local(engine: AsyncEngine) -> dict[str, Any]:
        return (await engine.wake_up(tags)).as_json()

    reached = await broadcast(engines, AdminCall(local, "POST", "/wake_up", {"tags": tags} if tags else {}))
    if _followed(reached):
        _holds(state).wake(models, tags or MEMORY_TAGS)
    return answer(model, reached, "did not wake up", "wake_up_failed")


async def reset_prefix_cache(request: Request) -> JSONResponse:
    state, _, model = await _posted(request, "resetting engines' prefix caches")
    engines, _ = _engines(state, model, "reset the prefix cache of")

    async def local(engine: AsyncEngine) -> dict[str, Any]:
        return {"status": "ok", "forgotten_blocks": await engine.reset_prefix_cache()}

    return answer(model, await broadcast(engines, AdminCall(local, "POST", "/reset_prefix_cache")),
                  "did not reset their prefix caches", "reset_prefix_cache_failed")


async def _asked(request: Request, doing: str, path: str, flag: str,
                 read: Callable[[AsyncEngine], dict[str, Any]]) -> JSONResponse:
    """GET /is_paused, /is_sleeping: each engine's answer, and `flag` true while any engine's is."""
    state: GatewayState = request.app.state.pitstop
    require_master(state, request, doing)
    model = _model(request.query_params.get("model"))
    engines, _ = _engines(state, model, "ask about")

    async def local(engine: AsyncEngine) -> dict[str, Any]:
        return read(engine)

    reached = await broadcast(engines, AdminCall(local, "GET", path))
    held = _holds(state).reason(model)
    return answer(model, reached, f"did not say whether they are {flag.removeprefix('is_')}", f"{flag}_failed",
                  **{flag: any(r.detail.get(flag) is True for r in reached)}, held=held)


async def is_paused(request: Request) -> JSONResponse:
    return await _asked(request, "asking whether engines are paused", "/is_paused", "is_paused",
                        lambda engine: {"is_paused": engine.is_paused})


async def is_sleeping(request: Request) -> JSONResponse:
    return await _asked(request, "asking whether engines sleep", "/is_sleeping", "is_sleeping",
                        lambda engine: {"is_sleeping": engine.is_sleeping, "level": engine.sleep_level,
                                        "sleeping": list(engine.sleeping_tags)})


ROUTES = [Route("/pause", pause, methods=["POST"]), Route("/resume", resume, methods=["POST"]),
          Route("/is_paused", is_paused, methods=["GET"]), Route("/sleep", sleep, methods=["POST"]),
          Route("/wake_up", wake_up, methods=["POST"]), Route("/is_sleeping", is_sleeping, methods=["GET"]),
          Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"])]
