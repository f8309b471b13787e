"""A chat's prompt tokens, for the APIs that ask before sending: Anthropic's `POST
/v1/messages/count_tokens` and OpenAI's `POST /v1/responses/input_tokens`. Counted by the deployment the
request would be served by where it can count (Pitstop's engine, in process or over HTTP, and any server
with vLLM's /tokenize: exact; OpenAI's models through litellm: tiktoken's encoding of the model), else
estimated as routing does: about four characters a token, over the text of the messages, their tool
calls' arguments and the tools' definitions, and each image as the model's deployments count it
(gateway/image_tokens.py: its size read from a data URL's header, the provider's or checkpoint's rule)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.server.errors import APIError
from gateway.backends.base import BackendError
from gateway.dispatch import as_sent
from gateway.image_size import message_images
from gateway.image_tokens import DEFAULT, ImageTokens
from gateway.request_body import parse_proxy_request
from gateway.routing import estimate_tokens

if TYPE_CHECKING:  # gateway.state builds what imports this module
    from gateway.state import GatewayState

log = logging.getLogger("pitstop.gateway")


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    counted_by: str | None  # the deployment that counted them; None: the gateway's estimate

    @property
    def headers(self) -> dict[str, str]:
        """Says how the number was had: `x-pitstop-token-count: counted` (and by which deployment) or `estimated`."""
        if self.counted_by is None:
            return {"x-pitstop-token-count": "estimated"}
        return {"x-pitstop-token-count": "counted", "x-pitstop-deployment": self.counted_by}


def chat_input_tokens(chat: dict, image_rules: Sequence[ImageTokens] = (DEFAULT,)) -> int:
    """The estimate: about four characters a token, and an image what it counts for under `image_rules` (the
    most of them: a model's deployments')."""
    texts = [json.dumps(chat.get("tools", ""))]
    image_tokens = sum(max(rule.tokens(image) for rule in image_rules or (DEFAULT,))
                       for image in message_images(chat["messages"]))
    for message in chat["messages"]:
        content = message.get("content")
        texts += [content] if isinstance(content, str) else [p.get("text", "") for p in content or ()]
        for call in message.get("tool_calls") or ():  # a function's arguments, or a custom call's input
            texts.append(((call.get("custom") or {}).get("input") if call.get("type") == "custom"
                          else (call.get("function") or {}).get("arguments")) or "")
    return estimate_tokens("".join(texts)) + image_tokens


async def count_input_tokens(state: GatewayState, chat: dict, headers: Mapping[str, str]) -> TokenCount:
    """The chat's prompt tokens on the model it would be routed to (`count_on_model`)."""
    parsed = parse_proxy_request(chat, "chat", headers)
    return await count_on_model(state, state.routes.resolve(parsed).model_name, parsed.body)


async def count_on_model(state: GatewayState, model: str, body: dict) -> TokenCount:
    """The chat `body`'s prompt tokens on `model`: its deployments' count (the first that can count; one
    that fails is passed over), else the estimate. A chat a deployment would refuse is that 4xx."""
    for deployment in state.pool.by_model.get(model, ()):
        try:
            counted = await deployment.backend.count_tokens(as_sent(deployment.backend, "chat", body)[0])
        except BackendError as exc:
            if exc.status >= 500:
                log.warning("counting tokens on %s: %s", deployment.name, exc.message)
                continue
            raise APIError(exc.status, exc.message, exc.param, exc.code) from None
        if counted is not None:
            return TokenCount(counted, deployment.name)
    return TokenCount(chat_input_tokens(body, state.pool.image_rules(model)), None)
