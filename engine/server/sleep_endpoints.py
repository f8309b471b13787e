"""vLLM's sleep mode over HTTP (engine/sleep.py), what an RL trainer colocated with its rollout engine calls:

- POST /sleep?level=1|2&mode=abort|wait: generation paused and the KV cache released; the weights kept in
  host memory (level 1, the default) or dropped (level 2);
- POST /wake_up?tags=weights&tags=kv_cache: both woken when `tags` is left out (vLLM repeats the
  parameter; a comma-separated list is taken too);
- GET /is_sleeping: `{"is_sleeping": bool}`, vLLM's answer, with the level and the tags asleep.

Off (403) unless the server was started with `--enable-sleep-mode` (vLLM's flag; vLLM keeps the endpoints
behind VLLM_SERVER_DEV_MODE as well): a sleeping engine serves nobody until it is woken. A call that does
not fit what sleeps now is a 409 naming the case (engine/server/app.py maps SleepStateError)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.server.errors import APIError, bad_request
from engine.server.generation import ServerState
from engine.weight_updates import EngineBusyError


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.pitstop
    if not state.enable_sleep_mode:
        raise APIError(403, "sleep mode is off on this server: start it with --enable-sleep-mode",
                       code="sleep_mode_disabled")
    return state


async def sleep(request: Request) -> Response:
    state = _state(request)
    raw = request.query_params.get("level", "1")
    if not raw.isdigit():
        raise bad_request("'level' must be 1 or 2", "level")
    try:
        change = await state.engine.sleep(int(raw), request.query_params.get("mode", "abort"))
    except EngineBusyError as exc:
        raise APIError(409, str(exc), code="engine_busy") from None
    return JSONResponse(change.as_json())


async def wake_up(request: Request) -> Response:
    state = _state(request)
    tags = [tag.strip() for value in request.query_params.getlist("tags") for tag in value.split(",")]
    return JSONResponse((await state.engine.wake_up(tags or None)).as_json())


async def is_sleeping(request: Request) -> Response:
    engine = _state(request).engine
    return JSONResponse({"is_sleeping": engine.is_sleeping, "level": engine.sleep_level,
                         "sleeping": list(engine.sleeping_tags)})
