"""vLLM's runtime LoRA API: POST /v1/load_lora_adapter `{"lora_name", "lora_path"}` and
POST /v1/unload_lora_adapter `{"lora_name"}`. Loading reads a folder on the engine's machine, so, as
vLLM's `VLLM_ALLOW_RUNTIME_LORA_UPDATING`, it is off unless the server was started with
`--allow-runtime-lora-updating` (a 403 says so). Adapters given at start (`--lora-modules`) need neither."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from engine.lora_registry import LoRANotFoundError
from engine.model.lora import LoRAError
from engine.server.errors import APIError, bad_request, not_found
from engine.server.generation import ServerState
from engine.server.json_body import read_json


def _fields(body: object, names: tuple[str, ...]) -> list[str]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    values = []
    for name in names:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise bad_request(f"'{name}' must be a non-empty string", name)
        values.append(value)
    return values


def _allowed(state: ServerState) -> None:
    if not state.allow_lora_updates:
        raise APIError(403, "loading and unloading LoRA adapters at run time is off on this server: start it with "
                       "--allow-runtime-lora-updating", code="lora_updates_disabled")


async def load_lora_adapter(request: Request) -> Response:
    state: ServerState = request.app.state.pitstop
    _allowed(state)
    name, path = _fields(await read_json(request), ("lora_name", "lora_path"))
    if name == state.model_name:
        raise bad_request(f"{name!r} is the base model's name", "lora_name")
    try:
        await state.engine.add_lora(name, path)
    except LoRAError as exc:
        raise bad_request(str(exc), "lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: Request) -> Response:
    state: ServerState = request.app.state.pitstop
    _allowed(state)
    (name,) = _fields(await read_json(request), ("lora_name",))
    try:
        await state.engine.remove_lora(name)
    except LoRANotFoundError:
        raise not_found(f"no LoRA adapter named {name!r} is loaded", "lora_name", "lora_not_found") from None
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
