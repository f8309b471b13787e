"""The backend interface. Every backend answers in OpenAI's JSON shapes: a whole response, or an
async iterator of chunks whose last one carries `usage` (the gateway always asks for it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from engine.hints import NO_HINTS, SchedulingHints
from engine.tracing import Traced

if TYPE_CHECKING:
    from gateway.moderation_guardrail import ModerationNotes

# Embeddings, reranks and moderations: `complete` only, never streamed. A rerank goes to models marked
# `mode: rerank` (a cross-encoder's /rerank: vLLM's, or litellm's `arerank`); its answer is checked by
# `checked_rerank`. A moderation goes to models marked `mode: moderation` (an OpenAI-compatible
# /moderations, or litellm's `amoderation`); its answer is checked by `checked_moderation`.
# Audio and images (gateway/media.py): a transcription or translation and an image generation or edit are whole
# answers (`complete`: {"content", "content_type", "usage", "duration"}); a speech is `stream`ed, its chunks
# {"audio": bytes, "content_type"} as the upstream sends them. A video's create (gateway/videos.py) answers the
# upstream's Video object; what follows it goes to the deployment that holds the job (gateway/backends/videos.py).
# vLLM's /classify and /score (gateway/vllm_endpoints.py) are whole answers too, checked as vLLM writes them.
Kind = Literal["chat", "completion", "embedding", "rerank", "classify", "score", "moderation", "transcription", "translation", "speech",
               "image", "image_edit", "video"]
MEDIA_KINDS = ("transcription", "translation", "speech", "image", "image_edit", "video")


@dataclass(frozen=True)
class CallContext:
    request_id: str
    session_id: str | None = None
    priority: float = 0.0
    pin_ttl_s: float | None = None
    timeout_s: float = 600.0
    hints: SchedulingHints = NO_HINTS
    # The prompt's tokens as the gateway estimates them: what a deployment's tpm window counts the request
    # for until its answer's usage is known (gateway/deployment_limits.py).
    estimated_tokens: int = 0
    # The span the call is made under, where the request is traced (gateway/tracing.py): sent on as W3C
    # `traceparent` over HTTP; an engine in process makes its own span under it.
    trace: Traced | None = None
    # Where a moderation guardrail's checks before the call are told (gateway/moderation_guardrail.py): the
    # request's outcome row keeps what they found and adds their cost.
    moderation: ModerationNotes | None = None


class BackendError(Exception):
    """A deployment failed. `retryable` failures (connection errors, 429, 5xx) before the first
    byte are retried on another deployment; others go back to the client with `status`."""

    def __init__(self, status: int, message: str, retryable: bool, param: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s  # the client's Retry-After, where the gateway knows one
        self.hedge: dict | None = None  # how a hedged race that failed went (gateway/hedging.py): the row's


class Backend(Protocol):
    # Whether session_id / priority / pin_ttl_s reach the deployment (Pitstop engines, vLLM priority).
    accepts_session: bool
    # Whether the deployment's scheduler orders by the gateway's rank (Pitstop engines' `rank_score`,
    # vLLM's `priority`); elsewhere the rank is only logged, and is scored beside the call.
    uses_rank: bool
    # Whether `complete("embedding", ...)` reaches an embeddings endpoint (Pitstop's engines have none).
    serves_embeddings: bool
    # Whether chats go with their custom tools and an allowed_tools tool_choice as they are (Pitstop's
    # engines, which hold calls to both); elsewhere custom tools are written as functions
    # (engine/custom_tools.py) and only the allowed tools are offered (engine/forced_tools.py).
    native_tools: bool
    # Whether chats go with Anthropic's `cache_control`, `thinking` and `thinking_blocks` (litellm's
    # `anthropic/` provider); elsewhere they are taken out (gateway/anthropic_fields.py).
    anthropic_fields: bool

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict: ...

    def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def healthy(self) -> bool: ...

    async def context_window(self) -> int | None:
        """The most prompt tokens the deployment's model takes (an engine's context length), or None where
        it does not say."""
        ...

    async def count_tokens(self, body: dict) -> int | None:
        """The prompt tokens of the chat `body` as this deployment counts them, or None where it cannot
        tell (the gateway then estimates); a BackendError where the chat is one it would refuse."""
        ...
