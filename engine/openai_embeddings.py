"""OpenAI's embeddings API over an AsyncEngine: each input is one engine request that computes its prompt
and returns the last token's final hidden state, L2-normalised (last-token pooling: Qwen3-Embedding,
e5-mistral, gte-Qwen2 are decoders pooled this way; SamplingParams.embed). Inputs of one call are
batched by the engine's scheduler like any requests, without padding, and a prompt prefix already
cached (a shared instruction, say) is not computed again. Shared by the engine's HTTP server and the
gateway's in-process engines.

Fields: `input` (a string, token ids, or a list of either, at most 2,048), `encoding_format` (`float`, or
`base64`: little-endian float32, what the openai SDK asks for), `dimensions` (the first n components,
normalised again: Matryoshka-trained models keep their meaning), `user` (ignored)."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from engine.async_engine import AsyncEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.server.errors import bad_request
from engine.server.fields import integer, read_object, string

MAX_INPUTS = 2048  # OpenAI's limit on one call's inputs
_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_EMBED = SamplingParams(max_tokens=1, temperature=0.0, embed=True)


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    encoding_format: str
    dimensions: int | None


def parse_embedding_request(body: object) -> EmbeddingRequest:
    body = read_object(body, _FIELDS)
    model = string(body, "model")
    if not model:
        raise bad_request("'model' is required", "model")
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_token(t) for t in raw)):
        inputs: list = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) or _is_token_list(x) for x in raw):
        inputs = raw
    else:
        raise bad_request("'input' must be a string, a list of token ids, or a non-empty list of either", "input")
    if len(inputs) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} inputs (got {len(inputs)})", "input")
    if any(len(x) == 0 for x in inputs):
        raise bad_request("an input must not be empty", "input")
    encoding = string(body, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dimensions = integer(body, "dimensions")
    if dimensions is not None and dimensions < 1:
        raise bad_request("'dimensions' must be at least 1", "dimensions")
    return EmbeddingRequest(model, inputs, encoding, dimensions)


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_token(t) for t in value)


async def embed(engine: AsyncEngine, request: EmbeddingRequest, model_name: str, lora: str | None = None) -> dict:
    """The OpenAI response body for `request` (InvalidRequestError for an input the engine refuses)."""
    prompts = [engine.encode(x) if isinstance(x, str) else list(x) for x in request.inputs]
    for i, ids in enumerate(prompts):
        try:
            engine.validate_request(ids, None, _EMBED)
        except InvalidRequestError as exc:
            where = f" (input {i})" if len(prompts) > 1 else ""
            raise InvalidRequestError(f"{exc}{where}", "input") from None
    call = uuid.uuid4().hex
    vectors = await asyncio.gather(*(_one(engine, ids, f"embd-{call}-{i}", lora) for i, ids in enumerate(prompts)))
    return embeddings_response(request, vectors, sum(len(ids) for ids in prompts), model_name)


def embeddings_response(request: EmbeddingRequest, vectors: Sequence[Sequence[float]], tokens: int,
                        model_name: str) -> dict:
    """OpenAI's body for the inputs' `vectors` (unit rows), cut to `dimensions` and in `encoding_format`;
    an InvalidRequestError for more dimensions than the model has."""
    width = len(vectors[0]) if len(vectors) else 0
    if request.dimensions is not None and request.dimensions > width:
        raise InvalidRequestError(f"'dimensions' is at most {width} for this model", "dimensions")
    data = [{"object": "embedding", "index": i, "embedding": _encoded(_cut(v, request.dimensions), request.encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def _one(engine: AsyncEngine, prompt_ids: list[int], request_id: str, lora: str | None) -> list[float]:
    last = None
    async for out in engine.generate(prompt_ids, _EMBED, request_id=request_id, lora=lora):
        last = out
    assert last is not None and last.embedding is not None, "an embedding request ends with its vector"
    return last.embedding


def _cut(vector: Sequence[float], dimensions: int | None) -> Sequence[float]:
    if dimensions is None or dimensions == len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(float(x) * float(x) for x in head)) or 1.0
    return [float(x) / norm for x in head]


def _encoded(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return [float(x) for x in vector]
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
