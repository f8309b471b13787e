"""POST /tokenize and /detokenize, as vLLM serves them: a prompt, or a chat rendered through the model's
template as generation renders it, as the token ids the engine would run; and token ids back as text.
Clients count a prompt with them before sending it (the gateway's `count_tokens` and `input_tokens`
ask an upstream engine this way), or build token-id prompts.

    POST /tokenize   {"model", "messages": [...], "tools"?, "add_generation_prompt"?, ...}  or  {"model", "prompt": "..."}
                     -> {"count", "max_model_len", "tokens", "token_strs"}
    POST /detokenize {"model", "tokens": [...]} -> {"prompt"}"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.async_engine import AsyncEngine
from engine.openai_images import requested_images, with_images
from engine.prompt_tokens import tokenize
from engine.server.errors import bad_request
from engine.server.generation import ServerState
from engine.server.json_body import read_json
from engine.server.protocol import parse_chat, parse_completion

_TOKENIZE_ONLY = ("add_special_tokens", "return_token_strs")


async def prompt_token_ids(engine: AsyncEngine, body: Any, model: str) -> list[int]:
    """The token ids a chat (`messages`) or a prompt (one string) runs as on `engine`, checked as the
    generation endpoints check them (a 400 for what they would refuse)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    if body.get("add_special_tokens") not in (None, False):
        raise bad_request("this engine encodes without adding special tokens (chat templates render their own): "
                          "'add_special_tokens' must be false", "add_special_tokens", "unsupported")
    request = {k: v for k, v in body.items() if k not in _TOKENIZE_ONLY} | {"model": model}
    if "messages" in request:
        parsed = parse_chat(request)
    elif isinstance(request.get("prompt"), str):
        parsed = parse_completion(request)
    else:
        raise bad_request("send 'messages' (a chat) or 'prompt' (one string)", "prompt")
    ids = (await tokenize(engine, parsed))[0]
    vision = getattr(engine.engine.runner, "vision", None)
    # Each image as its feature tokens, counted without fetching it (Gemma 3's are widened in the text already).
    urls = requested_images(engine, parsed)
    if urls and vision.dynamic_resolution:  # type: ignore[union-attr]  # Qwen2.5-VL: the count needs the picture
        ids = (await with_images(engine, urls, ids))[0]
    elif urls and not vision.text_expansion:  # type: ignore[union-attr]
        ids = [t for token in ids for t in [token] * (vision.tokens_per_image if token == vision.image_token_id else 1)]
    return ids


def token_strings(engine: AsyncEngine, ids: list[int]) -> list[str]:
    """The vocabulary's own string of each id, as vLLM's convert_ids_to_tokens."""
    tokenizer = engine.tokenizer
    id_to_token = getattr(tokenizer, "id_to_token", None)
    return [id_to_token(i) if id_to_token is not None else tokenizer.decode([i], skip_special_tokens=False)  # type: ignore[union-attr]
            for i in ids]


def detokenized(engine: AsyncEngine, tokens: Any) -> str:
    """/detokenize's `tokens` as text (special tokens kept), or a 400 naming what is wrong with them."""
    vocab = engine.vocab_size
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 and
                                               (vocab is None or t < vocab) for t in tokens):
        raise bad_request(f"'tokens' must be a list of token ids (integers from 0 to {vocab})", "tokens")
    if engine.tokenizer is None:
        raise bad_request("this engine has no tokenizer to decode with", "tokens", "unsupported")
    return engine.tokenizer.decode(tokens, skip_special_tokens=False)


async def tokenized(engine: AsyncEngine, body: Any, model: str) -> dict:
    """/tokenize's answer for `body` on `engine`."""
    ids = await prompt_token_ids(engine, body, model)
    strs = token_strings(engine, ids) if body.get("return_token_strs") else None
    return {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids, "token_strs": strs}


async def tokenize_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.pitstop
    body = await read_json(request)
    _check_model(body, state)
    return JSONResponse(await tokenized(state.engine, body, state.model_name))


async def detokenize_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.pitstop
    body = await read_json(request)
    _check_model(body, state)
    return JSONResponse({"prompt": detokenized(state.engine, body.get("tokens"))})


def _check_model(body: Any, state: ServerState) -> None:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model", state.model_name)  # vLLM lets it out
    state.adapter_for(model if isinstance(model, str) else repr(model))  # an adapter tokenizes as its base
