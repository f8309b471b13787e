"""How the fake upstream (tests/gateway/upstream.py) answers POST /v1/moderations, as OpenAI does: one result
for a string, one for each string of a list, one for a list of multimodal parts (its text parts read
together). A result says what its text asks for, so a test knows it in advance (`moderation_result`):
  [flag:violence]        flagged for violence, score 0.9
  [flag:violence=0.3]    violence scored 0.3, flagged only at 0.5 or more (as a model's own cut)
every other category 0.0001. The upstream's directives apply too ([fail:500], [fail:503@a], [delay:2]) and
so does its admin fail mode; `[malformed]` answers a result whose `flagged` is a string, `[short]` one result
fewer than the contents sent."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.gateway.upstream_answers import Upstream, directives, error_response

CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
              "violence/graphic")
_FLAG = re.compile(r"\[flag:([a-z/-]+)(?:=([0-9.]+))?\]")
FLAGGED_SCORE = 0.9
QUIET_SCORE = 0.0001


def moderation_result(text: str, image: bool = False) -> dict:
    """The result the fake gives one text (with an image beside it: its input types say so)."""
    scores = dict.fromkeys(CATEGORIES, QUIET_SCORE)
    for category, score in _FLAG.findall(text):
        scores[category] = float(score) if score else FLAGGED_SCORE
    flags = {category: score >= 0.5 for category, score in scores.items()}
    return {"flagged": any(flags.values()), "categories": flags, "category_scores": scores,
            "category_applied_input_types": {c: ["text", "image"] if image else ["text"] for c in CATEGORIES}}


def _contents(value: Any) -> list[tuple[str, bool]] | None:
    """(text, with an image) of each content to classify, or None for a body OpenAI refuses."""
    if isinstance(value, str):
        return [(value, False)]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [(item, False) for item in value]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        texts = [p["text"] for p in value if p.get("type") == "text" and isinstance(p.get("text"), str)]
        return [(" ".join(texts), any(p.get("type") == "image_url" for p in value))]
    return None


async def moderate(upstream: Upstream, body: Any) -> Any:
    from starlette.responses import JSONResponse

    upstream.requests += 1
    contents = _contents(body.get("input")) if isinstance(body, dict) else None
    if contents is None:
        return error_response(400, "invalid body")
    upstream.bodies = [*upstream.bodies[-49:], body]
    found = directives(" ".join(text for text, _ in contents), upstream.name)
    await asyncio.sleep(min(found.get("delay", 0.0), 30.0))
    if fail := upstream.fail_status or int(found.get("fail", 0)):
        return error_response(fail, f"injected {fail} from {upstream.name}")
    results = [moderation_result(text, image) for text, image in contents]
    if any("[malformed]" in text for text, _ in contents):
        results[0]["flagged"] = "yes"
    if any("[short]" in text for text, _ in contents):
        results.pop()
    return JSONResponse({"id": f"modr-{upstream.name}-{upstream.requests}",
                         "model": body.get("model") or "omni-moderation-latest", "results": results})
