"""What an RL trainer calls between rollout rounds (engine/pause.py, engine/weight_updates.py):

- POST /pause?mode=abort|wait|keep&clear_cache=true, POST /resume, GET /is_paused (vLLM's, same
  parameters and answers);
- POST /update_weights_from_disk `{"model_path", "abort_all_requests", "draft_model_path"?}` (SGLang's): a
  checkpoint folder of the same model becomes the weights served, without a restart, and a draft model's
  folder the draft's in the same pause; the engine is paused for it where it is not paused already (its
  requests finish first, or are aborted);
- POST /reset_prefix_cache (vLLM's): every cached prefix forgotten.

They stop or change what every client gets, and the update reads a folder on the engine's machine, so
they answer 403 unless the server was started with `--allow-weight-updates` (vLLM keeps them behind
VLLM_SERVER_DEV_MODE)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.pause import PAUSE_MODES
from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError, bad_request
from engine.server.generation import ServerState
from engine.server.json_body import read_json
from engine.weight_updates import DRAFT_PARAM, EngineBusyError


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.pitstop
    if not state.allow_weight_updates:
        raise APIError(403, "pausing the engine and updating its weights are off on this server: start it with "
                       "--allow-weight-updates", code="weight_updates_disabled")
    return state


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() not in ("true", "false", "1", "0"):
        raise bad_request(f"'{name}' must be true or false", name)
    return value.lower() in ("true", "1")


async def pause(request: Request) -> Response:
    state = _state(request)
    mode = request.query_params.get("mode", "abort")
    if _flag(request, "wait_for_inflight_requests", False):  # vLLM's older spelling of mode=wait
        mode = "wait"
    if mode not in PAUSE_MODES:
        raise bad_request(f"'mode' must be one of {', '.join(PAUSE_MODES)}", "mode")
    await state.engine.pause(mode, clear_cache=_flag(request, "clear_cache", True))  # type: ignore[arg-type]
    return JSONResponse({"status": "paused"})


async def resume(request: Request) -> Response:
    await _state(request).engine.resume()
    return JSONResponse({"status": "resumed"})


async def is_paused(request: Request) -> Response:
    return JSONResponse({"is_paused": _state(request).engine.is_paused})


async def reset_prefix_cache(request: Request) -> Response:
    forgotten = await _state(request).engine.reset_prefix_cache()
    return JSONResponse({"status": "ok", "forgotten_blocks": forgotten})


async def update_weights_from_disk(request: Request) -> Response:
    state = _state(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model_path, abort_all = body.get("model_path"), body.get("abort_all_requests", False)
    if not isinstance(model_path, str) or not model_path:
        raise bad_request("'model_path' must be a non-empty string: a checkpoint folder on the engine's machine",
                          "model_path")
    if not isinstance(abort_all, bool):
        raise bad_request("'abort_all_requests' must be a boolean", "abort_all_requests")
    draft_model_path = draft_path(body)
    try:
        update = await state.engine.update_weights(model_path, abort_all, draft_model_path)
    except EngineBusyError as exc:
        state.metrics.weight_updates.labels("busy").inc()
        raise APIError(409, str(exc), code="engine_busy") from None
    except InvalidRequestError:
        state.metrics.weight_updates.labels("refused").inc()
        raise
    state.metrics.weight_updates.labels("loaded").inc()
    return JSONResponse(update.as_json())


def draft_path(body: dict) -> str | None:
    """The request's `draft_model_path` (None: the draft keeps its weights); also read by gateway/weight_admin.py."""
    value = body.get(DRAFT_PARAM)
    if value is not None and (not isinstance(value, str) or not value):
        raise bad_request(f"'{DRAFT_PARAM}' must be a non-empty string: the draft model's checkpoint folder on the "
                          "engine's machine (or left out: the draft keeps its weights)", DRAFT_PARAM)
    return value
