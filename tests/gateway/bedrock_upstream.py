"""A mock of Amazon Bedrock's Converse API for tests: `POST /model/{modelId}/converse`, answered whole, recording
each request body (the SigV4-signed call litellm's `bedrock/` provider makes with any keys). Serve `app()` on a
real socket (tests/engine/serving.py `serve_in_thread`) and point a deployment's `api_base` at it.

Its answer: when the request turns thinking on (`additionalModelRequestFields.thinking`), a reasoning block
(`THOUGHT`) signed `bedrock-sig-<n>` (n counts requests), then the text `TEXT`. Usage: `USAGE` (cache reads
and writes)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.gateway.anthropic_upstream import RecordedBodies

THOUGHT = "Reasoning on Bedrock."
TEXT = "Four."
USAGE = {"inputTokens": 100, "outputTokens": 7, "totalTokens": 1007, "cacheReadInputTokens": 600,
         "cacheWriteInputTokens": 300}


class BedrockUpstream(RecordedBodies):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/model/{model_id:path}/converse", self.converse, methods=["POST"])])

    async def converse(self, request: Request) -> Any:
        body = await request.json()
        self.paths.append(request.url.path)
        signature = f"bedrock-sig-{self.record(body)}"
        content: list[dict] = []
        if (body.get("additionalModelRequestFields") or {}).get("thinking"):
            content.append({"reasoningContent": {"reasoningText": {"text": THOUGHT, "signature": signature}}})
        content.append({"text": TEXT})
        return JSONResponse({"output": {"message": {"role": "assistant", "content": content}},
                             "stopReason": "end_turn", "usage": USAGE, "metrics": {"latencyMs": 1}})
