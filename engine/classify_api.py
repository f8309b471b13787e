"""vLLM's classification API over a DecoderScorer (engine/decoder_scorer.py), for `pitstop engine serve` on a
decoder classifier (engine/server/classifier_app.py): POST /classify (and /v1/classify) with `model`, `input` (a
string, token ids, or a list of either) and vLLM's `truncate_prompt_tokens`; the answer `{id, object: list,
created, model, data: [{index, label, probs, num_classes}], usage}`: `probs` the softmax over the labels (a
one-label model's: the sigmoid of its logit, as vLLM's), `label` the config's id2label name of the likeliest."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from engine.cross_encoder_api import check_model
from engine.decoder_scorer import DecoderScorer, sigmoid
from engine.server.errors import bad_request
from engine.server.fields import integer, read_object
from engine.vllm_bodies import classify_inputs

_FIELDS = {"model", "input", "truncate_prompt_tokens", "user", "priority"}  # the last two taken and ignored


def probabilities(logits: list[float]) -> list[float]:
    if len(logits) == 1:
        return [sigmoid(logits[0])]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


async def classify_answer(scorer: DecoderScorer, raw: Any, served: str | None, model_name: str) -> dict:
    body = read_object(raw, _FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    check_model(model, served)
    inputs = classify_inputs(body.get("input"))
    prompts = scorer.truncated([scorer.text_ids(x) if isinstance(x, str) else list(x) for x in inputs],
                               integer(body, "truncate_prompt_tokens"))
    logits = await scorer.logits(prompts, "input")
    data = []
    for i, row in enumerate(logits):
        probs = probabilities(row)
        data.append({"index": i, "label": scorer.head.labels[max(range(len(probs)), key=probs.__getitem__)],
                     "probs": probs, "num_classes": len(probs)})
    tokens = sum(map(len, prompts))
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model_name,
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                    "prompt_tokens_details": None}}
