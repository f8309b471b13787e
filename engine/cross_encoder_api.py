"""vLLM's rerank and score APIs over a CrossEncoder (engine/cross_encoder.py) or a decoder classifier
(engine/decoder_scorer.py), shared by `pitstop engine serve` on a cross-encoder or classifier folder
(engine/server/cross_encoder_app.py) and the gateway's in-process reranker (gateway/backends/cross_encoder.py).

- rerank (`/v1/rerank`, `/rerank`, `/v2/rerank`): the body the gateway reads (engine/rerank_body.py) plus
  vLLM's `truncate_prompt_tokens`; the answer `{id, model, results: [{index, relevance_score, document?}],
  usage: {total_tokens}}`, best first, `top_n` of them.
- score (`/v1/score`, `/score`): `text_1` and `text_2`, each a string or a list of them, paired one to one
  (1:1, N:N) or the one `text_1` with each `text_2` (1:N); the answer `{id, object: list, created, model,
  data: [{index, object: score, score}], usage}` in the pairs' order."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from engine.cross_encoder import ScoredPairs
from engine.rerank_body import parse_rerank_body, ranked_results
from engine.server.errors import bad_request, not_found
from engine.server.fields import integer, read_object
from engine.vllm_bodies import score_pairs

_VLLM_FIELDS = {"truncate_prompt_tokens", "priority", "user"}  # read, or taken and ignored as vLLM does
_SCORE_FIELDS = {"model", "text_1", "text_2", *_VLLM_FIELDS}


class PairScorer(Protocol):
    """What scores pairs: a CrossEncoder (engine/cross_encoder.py) or a decoder classifier on the engine
    (engine/decoder_scorer.py)."""

    model_dir: Path

    @property
    def max_model_len(self) -> int: ...

    async def score(self, pairs: list[tuple[str, str]], truncate_prompt_tokens: int | None = None) -> ScoredPairs: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


def check_model(model: str, served: str | None) -> None:
    if served is not None and model != served:
        raise not_found(f"the model {model!r} does not exist; this server serves {served!r}", "model",
                        "model_not_found")


async def rerank_answer(encoder: PairScorer, raw: Any, served: str | None, model_name: str) -> dict:
    """`served`: the name a body's `model` must be (None: any, the gateway has routed it); `model_name`:
    the name the answer gives."""
    body = parse_rerank_body(raw)
    check_model(body.model, served)
    read_object(body.extra, _VLLM_FIELDS)  # a 400 naming a field this server does not read
    scored = await encoder.score([(body.query, document) for document in body.documents],
                                 integer(body.extra, "truncate_prompt_tokens"))
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model_name,
            "results": ranked_results(list(enumerate(scored.scores)), body.documents, body.kept,
                                      body.return_documents),
            "usage": {"total_tokens": scored.tokens}}


async def score_answer(encoder: PairScorer, raw: Any, served: str | None, model_name: str) -> dict:
    body = read_object(raw, _SCORE_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    check_model(model, served)
    pairs = score_pairs(body)
    scored = await encoder.score(pairs, integer(body, "truncate_prompt_tokens"))
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model_name,
            "data": [{"index": i, "object": "score", "score": score} for i, score in enumerate(scored.scores)],
            "usage": {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens, "completion_tokens": 0}}
