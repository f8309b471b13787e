"""POST /v1/embeddings: OpenAI's embeddings API on the engine's model or one of its LoRA adapters
(engine/openai_embeddings.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.openai_embeddings import embed, parse_embedding_request
from engine.server.errors import engine_unavailable
from engine.server.generation import ServerState
from engine.server.json_body import read_json


async def embeddings(request: Request) -> Response:
    state: ServerState = request.app.state.pitstop
    parsed = parse_embedding_request(await read_json(request))
    adapter = state.adapter_for(parsed.model)
    if not state.engine.is_healthy:
        raise engine_unavailable(state.engine.dead_reason)
    return JSONResponse(await embed(state.engine, parsed, parsed.model, adapter))
