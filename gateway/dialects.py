"""The APIs the gateway serves as a chat: OpenAI's Responses API (gateway/stored_responses.py),
Anthropic's Messages API (gateway/messages_stream.py) and Google's Gemini API (gateway/gemini_stream.py).
The proxy asks each the same things: the chat a request stands for, the answer turned back (whole, or as
its own stream events), and its error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Literal, Protocol

from starlette.responses import Response

from engine.server.errors import APIError
from gateway import gemini_answer, messages_api
from gateway.request_body import ProxyRequest

DialectName = Literal["responses", "messages", "gemini"]


class DialectStream(Protocol):
    """Chat chunks in, the dialect's stream events (SSE bytes) out."""

    keep: Callable[[dict], Awaitable[None]] | None  # awaited with the final answer before its last event
    end: Callable[[], Awaitable[None]] | None  # awaited once the turn is over, before its last event or error
    # Events made after the answer's end, before the final answer (a Responses turn's MCP tool loop).
    follow_up: Callable[[], AsyncIterator[bytes]] | None

    def start(self) -> Iterator[bytes]: ...

    def chunk(self, chunk: dict) -> Iterator[bytes]: ...

    def completed(self) -> Iterator[bytes]: ...  # what closes the output, before the final answer

    def final(self, usage: dict | None) -> dict: ...

    def final_event(self, final: dict) -> bytes: ...

    def failed(self, error: APIError) -> bytes: ...


class Dialect(Protocol):
    chat: dict  # the chat request it stands for

    def adopt(self, parsed: ProxyRequest) -> None: ...  # the parsed chat, before it is served

    async def answer(self, answer: dict, model: str) -> dict: ...  # a whole chat answer, turned back

    def stream(self, model: str) -> DialectStream: ...

    async def end(self) -> None: ...  # the turn is over (answered or failed): what it held is given back


def error_response(dialect: str | None, error: APIError) -> Response:
    """The error as the client's API shapes it: Anthropic's for Messages, Google's for Gemini, OpenAI's for
    everything else."""
    if dialect == "gemini":
        return gemini_answer.error_response(error)
    return messages_api.error_response(error) if dialect == "messages" else error.response()

