"""An OpenAI-compatible server over HTTP, spoken to directly with httpx: Pitstop's own engine
instances (`pitstop-engine/...`, which take session_id / priority / pin_ttl_s) and, when chosen,
other OpenAI-compatible servers. One pooled client per deployment."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from gateway.backends.base import BackendError, CallContext, Kind

_PATHS = {"chat": "/chat/completions", "completion": "/completions"}


def _error_from_response(status: int, raw: bytes) -> BackendError:
    message, param, code = raw.decode(errors="replace")[:500] or f"upstream answered {status}", None, None
    try:
        error = json.loads(raw)["error"]
        message, param, code = error.get("message", message), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError):
        pass
    return BackendError(status, message, retryable=status == 429 or status >= 500, param=param, code=code)


class OpenAIHTTPBackend:
    def __init__(self, api_base: str, served_model: str, api_key: str | None = None,
                 accepts_session: bool = False, send_priority: bool = False, connect_timeout_s: float = 10.0,
                 max_connections: int = 1000) -> None:
        self.api_base = api_base.rstrip("/")
        self.served_model = served_model
        self.accepts_session = accepts_session
        self.send_priority = accepts_session or send_priority  # vLLM takes `priority` (lower first)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(None, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.aclose()

    async def healthy(self) -> bool:
        try:
            response = await self.client.get(f"{self.api_base}/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _body(self, body: dict, ctx: CallContext, stream: bool) -> dict:
        out = {**body, "model": self.served_model, "stream": stream}
        if stream:
            out["stream_options"] = {"include_usage": True}
        if self.accepts_session and ctx.session_id is not None:
            out["session_id"] = ctx.session_id
            if ctx.pin_ttl_s is not None:
                out["pin_ttl_s"] = ctx.pin_ttl_s
        if self.send_priority and ctx.priority:
            out["priority"] = ctx.priority if self.accepts_session else int(ctx.priority)
        return out

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        try:
            response = await self.client.post(self.api_base + _PATHS[kind], json=self._body(body, ctx, False),
                                              timeout=httpx.Timeout(ctx.timeout_s, connect=None))
        except httpx.TimeoutException as exc:
            raise BackendError(504, f"upstream timed out: {exc!r}", retryable=True) from None
        except httpx.HTTPError as exc:
            raise BackendError(502, f"upstream unreachable: {exc!r}", retryable=True) from None
        if response.status_code != 200:
            raise _error_from_response(response.status_code, response.content)
        try:
            return response.json()
        except ValueError:
            raise BackendError(502, "upstream sent invalid JSON", retryable=True) from None

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        request = self.client.build_request("POST", self.api_base + _PATHS[kind],
                                            json=self._body(body, ctx, True),
                                            timeout=httpx.Timeout(ctx.timeout_s, connect=None))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise BackendError(504, f"upstream timed out: {exc!r}", retryable=True) from None
        except httpx.HTTPError as exc:
            raise BackendError(502, f"upstream unreachable: {exc!r}", retryable=True) from None
        try:
            if response.status_code != 200:
                raise _error_from_response(response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk and "choices" not in chunk:
                    error = chunk["error"]
                    raise BackendError(502, f"upstream stream failed: {error.get('message')}", retryable=False,
                                       code=error.get("code"))
                yield chunk
            raise BackendError(502, "upstream stream ended without [DONE]", retryable=False)
        except httpx.HTTPError as exc:
            raise BackendError(502, f"upstream stream broke: {exc!r}", retryable=False) from None
        except ValueError:
            raise BackendError(502, "upstream sent an invalid stream event", retryable=False) from None
        finally:
            await response.aclose()
