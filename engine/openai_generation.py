"""One request on an AsyncEngine, answered in OpenAI's chat or text-completion shapes, whole or as
chunks. Shared by the engine's HTTP server and the gateway's in-process backend, so both speak
exactly the same OpenAI dialect."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace

from engine.async_engine import AsyncEngine
from engine.detokenizer import Decoder
from engine.hints import SchedulingHints
from engine.logprobs import TokenLogprobs
from engine.merge import merged
from engine.outputs import RequestOutput
from engine.sampling_params import InvalidRequestError
from engine.server.errors import bad_request
from engine.server.protocol import GenerateRequest

# Prompts longer than this (or chats of more messages) are rendered and tokenized on a worker
# thread, so one huge prompt does not stall every stream on the event loop.
_INLINE_TOKENIZE_CHARS = 32 << 10
_INLINE_MESSAGES = 64


def usage(out: RequestOutput) -> dict:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}


class Shapes:
    """The JSON objects of one response: OpenAI's chat or legacy text-completion format."""

    def __init__(self, chat: bool, model: str, include_usage: bool, response_id: str | None = None) -> None:
        self.chat = chat
        self.id = response_id or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _envelope(self, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.chat else ""),
                "created": self.created, "model": self.model}

    def chunk(self, text: str | None, finish_reason: str | None, role: bool = False,
              logprobs: dict | None = None, index: int = 0) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        out = self._envelope(chunk=True) | {"choices": [choice]}
        return out | {"usage": None} if self.include_usage else out

    def usage_chunk(self, last: RequestOutput) -> dict:
        return self._envelope(chunk=True) | {"choices": [], "usage": usage(last)}

    def response(self, choices: list[tuple[str, str | None, dict | None]], last: RequestOutput) -> dict:
        """choices: (text, finish reason, logprobs) each; `last` carries the usage of them all."""
        if self.chat:
            out = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish} for i, (text, finish, logprobs) in enumerate(choices)]
        else:
            out = [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}
                   for i, (text, finish, logprobs) in enumerate(choices)]
        return self._envelope(chunk=False) | {"choices": out, "usage": usage(last)}


# A log-probability the JSON can carry (a token the model rules out has -inf), as vLLM clamps it.
_LOWEST_LOGPROB = -9999.0


class LogprobShapes:
    """Sampled tokens' log-probabilities in OpenAI's shapes: a chat's `content` entries (token, logprob,
    bytes, top_logprobs), a completion's parallel lists (tokens, token_logprobs, top_logprobs as
    token -> logprob, text_offset). A token's text is its own decoding, as vLLM gives it."""

    def __init__(self, tokenizer: Decoder | None, chat: bool) -> None:
        self.tokenizer = tokenizer
        self.chat = chat
        self.offset = 0  # a completion's text_offset runs on across chunks
        self._texts: dict[int, str] = {}

    def _token(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer else ""
            self._texts[token_id] = text
        return text

    def _entry(self, token_id: int, logprob: float) -> dict:
        token = self._token(token_id)
        return {"token": token, "logprob": max(logprob, _LOWEST_LOGPROB),
                "bytes": list(token.encode("utf-8", "surrogatepass"))}

    def block(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict:
        if self.chat:
            return {"content": [self._entry(t, lp.logprob) | {"top_logprobs": [
                self._entry(i, v) for i, v in zip(lp.top_ids, lp.top_logprobs, strict=True)]}
                for t, lp in zip(token_ids, logprobs, strict=True)], "refusal": None}
        tokens = [self._token(t) for t in token_ids]
        offsets = []
        for token in tokens:
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": [max(lp.logprob, _LOWEST_LOGPROB) for lp in logprobs],
                "top_logprobs": [self._top(lp) for lp in logprobs], "text_offset": offsets}

    def _top(self, logprobs: TokenLogprobs) -> dict[str, float]:
        """token -> logprob; where two tokens decode alike (parts of one character), the likelier stays."""
        top: dict[str, float] = {}
        for token_id, value in zip(logprobs.top_ids, logprobs.top_logprobs, strict=True):
            top.setdefault(self._token(token_id), max(value, _LOWEST_LOGPROB))
        return top


async def tokenize(engine: AsyncEngine, parsed: GenerateRequest) -> list[int]:
    if isinstance(parsed.prompt, list):
        return parsed.prompt
    if parsed.messages is not None and engine.tokenizer is None:
        raise bad_request("this engine has no tokenizer to render chat messages", "messages")
    if _small(parsed):
        text = _render(engine, parsed)
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return engine.encode(text)
        return await asyncio.to_thread(engine.encode, text)
    # Rendering a chat template is Python (jinja): 100,000 messages took 1.7 s of the event loop.
    return await asyncio.to_thread(lambda: engine.encode(_render(engine, parsed)))


def _small(parsed: GenerateRequest) -> bool:
    """Cheap to render and tokenize on the event loop; counted without walking a long list."""
    if parsed.messages is None:
        return len(parsed.prompt or "") <= _INLINE_TOKENIZE_CHARS
    if len(parsed.messages) > _INLINE_MESSAGES or len(parsed.tools or ()) > _INLINE_MESSAGES:
        return False
    return sum(_text_chars(message.get("content")) for message in parsed.messages) <= _INLINE_TOKENIZE_CHARS


def _text_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # text parts
        return sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return 0


def _render(engine: AsyncEngine, parsed: GenerateRequest) -> str:
    if parsed.messages is None:
        assert parsed.prompt is not None and not isinstance(parsed.prompt, list)
        return parsed.prompt
    assert engine.tokenizer is not None
    try:
        return engine.tokenizer.apply_chat_template(parsed.messages, tools=parsed.tools, add_generation_prompt=True)
    except Exception as exc:  # template errors (raise_exception, missing template) come from the input
        raise bad_request(f"could not render the chat template: {exc}", "messages") from None


class OpenAIGeneration:
    """Tokenize and validate (`start`, raising 4xx errors before anything is sent), then either
    `whole()` or `chunks()`. `ttft_s` and `last` are known once the generation has produced. A request
    for `n` choices runs as n sequences: the others wait for the first to compute the prompt, then take
    its blocks from the prefix cache (Sequence.prompt_leader); only the first carries the session and
    its pin."""

    def __init__(self, engine: AsyncEngine, parsed: GenerateRequest, chat: bool, model_name: str,
                 response_id: str | None = None) -> None:
        self.engine = engine
        self.parsed = parsed
        self.shapes = Shapes(chat, model_name, parsed.include_usage, response_id)
        self.logprobs = [LogprobShapes(engine.tokenizer, chat) for _ in range(parsed.n)] \
            if parsed.params.logprobs is not None else None
        self.started = time.monotonic()
        self.ttft_s: float | None = None
        self.last: RequestOutput | None = None  # with n > 1: the usage of all choices (`_combined`)
        self._outputs: list[AsyncGenerator[RequestOutput, None]] = []

    async def start(self, priority: float | None = None, session_id: str | None = None,
                    pin_ttl_s: float | None = None, hints: SchedulingHints | None = None) -> None:
        parsed = self.parsed
        prompt_field = "messages" if self.shapes.chat else "prompt"
        try:
            prompt_ids = await tokenize(self.engine, parsed)
            self.engine.validate_request(prompt_ids, pin_ttl_s if pin_ttl_s is not None else parsed.pin_ttl_s,
                                         parsed.params)
        except InvalidRequestError as exc:
            raise bad_request(str(exc), prompt_field if exc.param == "prompt" else exc.param) from None
        params = parsed.resolved_params(len(prompt_ids), self.engine.max_model_len)
        for i in range(parsed.n):
            seed = None if params.seed is None else params.seed + i  # seeded samples still differ
            self._outputs.append(self.engine.generate(
                prompt_ids, replace(params, seed=seed) if i else params,
                request_id=self.shapes.id if parsed.n == 1 else f"{self.shapes.id}-{i}",
                priority=parsed.priority if priority is None else priority,
                session_id=None if i else parsed.session_id if session_id is None else session_id,
                pin_ttl_s=None if i else parsed.pin_ttl_s if pin_ttl_s is None else pin_ttl_s,
                hints=parsed.hints if hints is None else hints,
                prompt_leader=f"{self.shapes.id}-0" if i else None))

    async def _outputs_iter(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        assert self._outputs, "start() first"
        lasts: list[RequestOutput | None] = [None] * len(self._outputs)
        async with aclosing(merged(self._outputs)) as outputs:
            async for i, out in outputs:
                if self.ttft_s is None:
                    self.ttft_s = time.monotonic() - self.started
                lasts[i] = out
                if len(lasts) == 1:
                    self.last = out
                elif out.finished and all(last is not None and last.finished for last in lasts):
                    self.last = _combined(lasts)  # type: ignore[arg-type]
                yield i, out

    async def whole(self) -> dict:
        n = self.parsed.n
        parts: list[list[str]] = [[] for _ in range(n)]
        token_ids: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprobs]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        async for i, out in self._outputs_iter():
            parts[i].append(out.text_delta)
            finish[i] = out.finish_reason or finish[i]
            if out.logprobs:
                token_ids[i] += out.new_token_ids
                logprobs[i] += out.logprobs
        assert self.last is not None, "a generation always ends with a finished output or an error"
        blocks = [shapes.block(ids, lps) for shapes, ids, lps in zip(self.logprobs, token_ids, logprobs, strict=True)] \
            if self.logprobs is not None else [None] * n
        return self.shapes.response(list(zip(("".join(p) for p in parts), finish, blocks, strict=True)), self.last)

    async def chunks(self) -> AsyncIterator[dict]:
        """OpenAI chunks (with n > 1, the choices' interleaved, each naming its index); the usage chunk
        comes last when the request asked for it. Raises EngineDeadError / InvalidRequestError
        mid-stream; closing the iterator aborts the request."""
        shapes, n = self.shapes, self.parsed.n
        # Tokens whose log-probabilities wait for their choice's next chunk (text held back).
        token_ids: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprobs]] = [[] for _ in range(n)]

        def pending(i: int) -> dict | None:
            if self.logprobs is None or not logprobs[i]:
                return None
            block = self.logprobs[i].block(token_ids[i], logprobs[i])
            token_ids[i].clear()
            logprobs[i].clear()
            return block

        if shapes.chat:
            for i in range(n):
                yield shapes.chunk(None, None, role=True, index=i)
        async for i, out in self._outputs_iter():
            if out.logprobs:
                token_ids[i].extend(out.new_token_ids)
                logprobs[i].extend(out.logprobs)
            if shapes.chat:
                if out.text_delta:
                    yield shapes.chunk(out.text_delta, None, logprobs=pending(i), index=i)
                if out.finished:
                    yield shapes.chunk(None, out.finish_reason, logprobs=pending(i), index=i)
            elif out.text_delta or out.finished:
                yield shapes.chunk(out.text_delta, out.finish_reason, logprobs=pending(i), index=i)
        if self.last is not None and shapes.include_usage:
            yield shapes.usage_chunk(self.last)


def _combined(lasts: list[RequestOutput]) -> RequestOutput:
    """The finished outputs of n choices as one, for the usage: the prompt once, every choice's tokens."""
    first = lasts[0]
    return replace(first, new_token_ids=[], text_delta="", logprobs=None,
                   num_output_tokens=sum(last.num_output_tokens for last in lasts))
