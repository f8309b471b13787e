"""API providers and other servers through litellm's async API (provider strings such as
`openai/gpt-4o-mini`, `anthropic/...`, `hosted_vllm/...` with `api_base`). litellm is imported on
first use: it is slow to import and the embedded default does not need it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from gateway.backends.base import BackendError, CallContext, Kind

# litellm otherwise fetches its price map from the internet at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _litellm() -> Any:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _as_backend_error(exc: Exception) -> BackendError:
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = 502
    message = getattr(exc, "message", None) or str(exc)
    return BackendError(status, str(message)[:1000], retryable=status in (408, 429) or status >= 500)


def _to_dict(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else obj.model_dump(exclude_none=False)


class LitellmBackend:
    def __init__(self, params: dict[str, Any], vllm_priority: bool = False) -> None:
        self.params = {k: v for k, v in params.items() if v is not None}
        # vLLM accepts `priority` (lower first); litellm passes it through extra_body.
        self.accepts_session = vllm_priority

    async def start(self) -> None:
        _litellm()

    async def close(self) -> None:
        return None

    async def healthy(self) -> bool:
        return True

    def _kwargs(self, body: dict, ctx: CallContext, stream: bool) -> dict:
        kwargs = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
        kwargs.update(self.params, stream=stream, timeout=ctx.timeout_s, num_retries=0)
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        if self.accepts_session and ctx.priority:
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}), "priority": int(ctx.priority)}
        return kwargs

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        litellm = _litellm()
        call = litellm.acompletion if kind == "chat" else litellm.atext_completion
        try:
            return _to_dict(await call(**self._kwargs(body, ctx, False)))
        except Exception as exc:
            raise _as_backend_error(exc) from None

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        litellm = _litellm()
        call = litellm.acompletion if kind == "chat" else litellm.atext_completion
        try:
            response = await call(**self._kwargs(body, ctx, True))
        except Exception as exc:
            raise _as_backend_error(exc) from None
        try:
            async for chunk in response:
                yield _to_dict(chunk)
        except Exception as exc:
            raise _as_backend_error(exc) from None
