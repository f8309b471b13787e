"""A call that reaches an HTTP backend after the gateway closed it fails as unreachable (retryable,
502) and opens no new connection pool that nothing would close."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.base import BackendError, CallContext
from gateway.backends.openai_http import OpenAIHTTPBackend


def test_calls_after_close_fail_without_opening_a_session() -> None:
    async def scenario() -> None:
        backend = OpenAIHTTPBackend("http://127.0.0.1:9/v1", "m")
        await backend.start()
        assert not backend.session.closed  # opened lazily on first use
        await backend.close()
        with pytest.raises(BackendError) as failure:
            await backend.complete("chat", {"messages": [{"role": "user", "content": "hi"}]}, CallContext("r1"))
        assert failure.value.status == 502 and failure.value.retryable
        assert backend._session is not None and backend._session.closed  # still the closed one
        assert not await backend.healthy()

    asyncio.run(scenario())
