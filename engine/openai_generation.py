"""One request on an AsyncEngine, answered in OpenAI's chat or text-completion shapes, whole or as
chunks. Shared by the engine's HTTP server and the gateway's in-process backend, so both speak
exactly the same OpenAI dialect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace

from engine.async_engine import AsyncEngine
from engine.call_stream import CallStream, streamed_calls
from engine.custom_tools import CustomCalls, custom_calls_of
from engine.harmony import INNER_TOOLS, HarmonyText, is_harmony
from engine.harmony_tools import forced_call, in_harmony
from engine.harmony_tools import held_calls as harmony_held_calls
from engine.held_calls import held_calls
from engine.hints import SchedulingHints
from engine.image_inputs import ImageInput
from engine.logprobs import TokenLogprobs
from engine.merge import merged
from engine.openai_images import requested_images, with_images
from engine.openai_logprobs import LogprobShapes, joined
from engine.openai_shapes import Answer, Shapes
from engine.openai_token_ids import TokenIds
from engine.outputs import RequestOutput
from engine.prompt_tokens import tokenize
from engine.reasoning import ReasoningSplitter, Split, starts_inside
from engine.reasoning import split as split_reasoning
from engine.sampling_params import InvalidRequestError
from engine.server.errors import bad_request
from engine.server.protocol import GenerateRequest
from engine.tool_parsers import parse_calls


class OpenAIGeneration:
    """Tokenize and validate (`start`, raising 4xx errors before anything is sent), then either
    `whole()` or `chunks()`. `ttft_s` and `last` are known once the generation has produced. A request
    for `n` choices runs as n sequences: the others wait for the first to compute the prompt, then take
    its blocks from the prefix cache (Sequence.prompt_leader); only the first carries the session and
    its pin. A completion's batch of prompts runs each the same way, its choices indexed prompt by
    prompt (choice k * n + j is prompt k's sample j). A completion's `echo` puts the prompt (and, asked for, its tokens' log-probabilities, which
    each choice computes) before each choice's answer; `score_only` (echo with max_tokens 0) drops the
    one token the engine still samples, so the answer is the prompt alone."""

    def __init__(self, engine: AsyncEngine, parsed: GenerateRequest, chat: bool, model_name: str,
                 response_id: str | None = None, reasoning_parser: str | None = None,
                 tool_call_parser: str | None = None, lora: str | None = None) -> None:
        self.engine = engine
        self.parsed = parsed
        self.lora = lora  # the LoRA adapter it runs with (engine/lora_registry.py); None: the base model
        # A chat answer's thinking is split from it (a grammar then holds only what follows the thinking),
        # and the tool calls it writes are parsed out of it unless a grammar holds it (a forced call is
        # already parsed: engine/forced_tools.py; but Harmony's, whose grammar holds a call message).
        harmony = is_harmony(reasoning_parser, tool_call_parser)  # gpt-oss's messages: engine/harmony.py
        forced = parsed.forced_tools
        self.harmony = harmony and chat and in_harmony(forced)  # one grammar holds its messages: harmony_tools.py
        self.forced = None if self.harmony else forced  # a forced call written as a JSON array (forced_tools.py)
        self.named_call = self.harmony and forced is not None and forced.named  # OpenAI then finishes with "stop"
        if harmony:  # its reasoning_effort goes to the chat template, not to a thinking budget
            reasoning_parser, tool_call_parser = None, INNER_TOOLS if self.harmony else None
        self.reasoning = (bool(reasoning_parser) or self.harmony) and chat and self.forced is None
        budget = parsed.params.thinking_token_budget
        if budget is not None and (harmony or not reasoning_parser):  # Harmony thinks on a channel, not in tags
            raise bad_request("'thinking_token_budget' is not supported for a Harmony model (gpt-oss): its analysis "
                              "channel's length is set by 'reasoning_effort' (low, medium, high)" if harmony else
                              "'thinking_token_budget' caps a reasoning model's thinking: this engine parses none "
                              "(start it with --reasoning-parser)", "thinking_token_budget", "unsupported")
        if budget is None and reasoning_parser and parsed.reasoning_effort is not None:  # else accepted, no effect
            budget = engine.engine.config.reasoning_effort_budgets[parsed.reasoning_effort]
            self.parsed = parsed = replace(parsed, params=replace(parsed.params, thinking_token_budget=budget))
        asked = forced is None and parsed.params.constraint is not None  # response_format or structured_outputs
        self.calls = tool_call_parser if chat and parsed.tools and not asked and self.forced is None else None
        held = None  # a grammar holding the calls: strict or allowed tools, or (Harmony) a forced call
        if self.harmony and (forced is not None or asked):  # the call or the final message in Harmony's messages
            held = forced_call(forced, parsed.tools or []) if forced is not None else None
            constraint = held or parsed.params.constraint.in_harmony_final()  # type: ignore[union-attr]
            self.parsed = parsed = replace(parsed, params=replace(parsed.params, constraint=constraint))
        elif self.calls and parsed.tools and engine.engine.can_constrain:  # strict or allowed tools
            held = harmony_held_calls(parsed.tools, parsed.allowed_tools) if self.harmony else held_calls(
                parsed.tools, self.calls, getattr(engine.tokenizer, "added_tokens", frozenset()),
                parsed.parallel_tool_calls, parsed.allowed_tools)
            if held is not None:
                self.parsed = parsed = replace(parsed, params=replace(parsed.params, constraint=held))
        if held is None and parsed.allowed_tools is not None and parsed.tools:  # no grammar: offer only those
            self.parsed = parsed = replace(parsed, tools=[t for t in parsed.tools
                                                          if t["function"]["name"] in parsed.allowed_tools])
        self.shapes = Shapes(chat, model_name, parsed.include_usage, response_id)
        self.logprobs = [LogprobShapes(engine.tokenizer, chat, parsed.return_tokens_as_token_ids)
                         for _ in range(parsed.num_choices)] \
            if parsed.params.logprobs is not None else None
        self.started = time.monotonic()
        self.ttft_s: float | None = None
        self.last: RequestOutput | None = None  # with n > 1: the usage of all choices (`_combined`)
        self._outputs: list[AsyncGenerator[RequestOutput, None]] = []
        self._prompt_ids: list[list[int]] = []  # each prompt's
        self._images: list[ImageInput] = []  # a chat's images (engine/openai_images.py)
        self._produced = [0] * parsed.num_choices  # each choice's output tokens so far
        # Told once when the outputs end: finished (None), failed, or cut (a cancel): the tracing span's hook.
        self.on_end: Callable[[OpenAIGeneration, BaseException | None], None] | None = None
        self.token_ids: TokenIds | None = None  # return_token_ids: the ids behind the text
        self._harmony: dict[int, HarmonyText] = {}  # each choice's Harmony reader

    async def start(self, priority: float | None = None, session_id: str | None = None,
                    pin_ttl_s: float | None = None, hints: SchedulingHints | None = None) -> None:
        parsed = self.parsed
        prompt_field = "messages" if self.shapes.chat else "prompt"
        pin_ttl_s = parsed.pin_ttl_s if pin_ttl_s is None else pin_ttl_s
        k = 0
        try:
            urls = requested_images(self.engine, parsed)  # refused before anything is fetched or rendered
            # Each embedded prompt as its placeholder ids (engine/prompt_embeds.py), before the text prompts.
            embeds, placeholders = await _embedded_prompts(self.engine, parsed)
            self._prompt_ids = placeholders + await tokenize(self.engine, parsed)
            if urls:  # a chat is one prompt
                ids, self._images = await with_images(self.engine, urls, self._prompt_ids[0])
                self._prompt_ids = [ids]
            if parsed.truncate_prompt_tokens is not None:
                self._prompt_ids = [ids[-parsed.truncate_prompt_tokens:] for ids in self._prompt_ids]
            if self.reasoning and not self.harmony and (constraint := parsed.params.constraint) is not None:
                constraint = constraint.after_thinking(self._inside(0))  # think, then the grammar
                self.parsed = parsed = replace(parsed, params=replace(parsed.params, constraint=constraint))
            for k, prompt_ids in enumerate(self._prompt_ids):
                if parsed.params.constraint is not None and k == 0:
                    # Checking a grammar compiles it (and, the first time, the tokenizer's view): off the loop.
                    await asyncio.to_thread(self.engine.validate_request, prompt_ids, pin_ttl_s, parsed.params)
                else:
                    self.engine.validate_request(prompt_ids, pin_ttl_s if k == 0 else None, parsed.params)
        except InvalidRequestError as exc:
            where = f" (prompt {k} of the batch)" if len(self._prompt_ids) > 1 else ""
            raise bad_request(f"{exc}{where}", prompt_field if exc.param == "prompt" else exc.param, exc.code) from None
        n, total = parsed.n, parsed.num_choices
        if parsed.return_token_ids:
            self.token_ids = TokenIds(self.shapes.chat, self._prompt_ids, n, total, parsed.echo)
        for k, prompt_ids in enumerate(self._prompt_ids):
            params = parsed.resolved_params(len(prompt_ids), self.engine.max_model_len)
            for j in range(n):
                choice = k * n + j
                seed = None if params.seed is None else params.seed + j  # seeded samples still differ
                self._outputs.append(self.engine.generate(
                    prompt_ids, replace(params, seed=seed) if j else params,
                    request_id=self.shapes.id if total == 1 else f"{self.shapes.id}-{choice}",
                    priority=parsed.priority if priority is None else priority,
                    session_id=None if choice else parsed.session_id if session_id is None else session_id,
                    pin_ttl_s=None if choice else pin_ttl_s,
                    hints=parsed.hints if hints is None else hints,
                    prompt_leader=f"{self.shapes.id}-{k * n}" if j else None, lora=self.lora, images=self._images,
                    prompt_embeds=embeds[k] if k < len(embeds) else None))

    async def _outputs_iter(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        assert self._outputs, "start() first"
        lasts: list[RequestOutput | None] = [None] * len(self._outputs)
        error: BaseException | None = None
        try:
            async with aclosing(merged(self._outputs)) as outputs:
                async for i, out in outputs:
                    if self.ttft_s is None:
                        self.ttft_s = time.monotonic() - self.started
                    if self.parsed.score_only:  # the sampled token is not part of the answer
                        out = replace(out, new_token_ids=[], text_delta="", logprobs=None, num_output_tokens=0,
                                      finish_reason="length" if out.finished else None)
                    if self.harmony:  # its tokens as the text the parsers read
                        out = self._harmony.setdefault(i, HarmonyText(self.engine.tokenizer)).translated(out)
                    lasts[i] = out
                    if self.token_ids is not None:
                        self.token_ids.arrived(i, out.new_token_ids)
                    self._produced[i] = out.num_output_tokens
                    if len(lasts) == 1:
                        self.last = out
                    elif out.finished and all(last is not None and last.finished for last in lasts):
                        self.last = _combined(lasts, self.parsed.n)  # type: ignore[arg-type]
                    yield i, out
        except BaseException as exc:  # GeneratorExit or a cancel included: the request was cut
            error = exc
            raise
        finally:
            if self.on_end is not None:
                self.on_end(self, error)

    def _echo(self, i: int, first: RequestOutput) -> tuple[str, dict | None]:
        """Choice i's echoed prompt: its text, and its logprobs block when the request asked."""
        assert self.parsed.prompts is not None, "echo is a completion's"
        prompt, prompt_ids = self.parsed.prompts[i // self.parsed.n], self._prompt_ids[i // self.parsed.n]
        tokenizer = self.engine.tokenizer
        text = prompt if isinstance(prompt, str) else \
            tokenizer.decode(prompt_ids, skip_special_tokens=False) if tokenizer is not None else ""
        if self.logprobs is None:
            return text, None
        assert first.prompt_logprobs is not None, "an echo with logprobs scores the prompt"
        return text, self.logprobs[i].prompt_block(prompt_ids, first.prompt_logprobs)

    async def whole(self) -> dict:
        n = self.parsed.num_choices
        parts: list[list[str]] = [[] for _ in range(n)]
        token_ids: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprobs]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        echoes: list[dict | None] = [None] * n
        async for i, out in self._outputs_iter():
            if self.parsed.echo and not parts[i]:
                text, echoes[i] = self._echo(i, out)
                parts[i].append(text)
            parts[i].append(out.text_delta)
            finish[i] = out.finish_reason or finish[i]
            if out.logprobs:
                token_ids[i] += out.new_token_ids
                logprobs[i] += out.logprobs
        assert self.last is not None, "a generation always ends with a finished output or an error"
        blocks = [joined(echo, shapes.block(ids, lps) if lps or echo is None else None)
                  for shapes, ids, lps, echo in zip(self.logprobs, token_ids, logprobs, echoes, strict=True)] \
            if self.logprobs is not None else [None] * n
        response = self.shapes.response([self._answer("".join(p), f, b, i) for i, (p, f, b) in enumerate(
            zip(parts, finish, blocks, strict=True))], self.last)
        return self.token_ids.response(response) if self.token_ids is not None else response

    def _allowed(self, calls: list[dict]) -> list[dict]:
        """With `parallel_tool_calls: false`, the first call only (custom tools' calls as custom calls)."""
        calls = calls if self.parsed.parallel_tool_calls else calls[:1]
        return custom_calls_of(calls, self.parsed.custom_tools) if self.parsed.custom_tools else calls

    def _split_delta(self, i: int, out: RequestOutput, splitters: dict[int, ReasoningSplitter]) -> Split:
        """Choice i's new text as thinking and answer (all answer without a reasoning parser)."""
        if not self.reasoning:
            return Split(content=out.text_delta)
        if i not in splitters:
            splitters[i] = ReasoningSplitter(self._inside(i))
        parts = splitters[i].feed(out.text_delta)
        if out.finished:
            rest = splitters[i].flush()
            parts = Split(parts.reasoning + rest.reasoning, parts.content + rest.content)
        return parts

    def _inside(self, choice: int) -> bool:
        """Does choice's prompt open the thinking block (DeepSeek-R1's template does)?"""
        tokenizer = self.engine.tokenizer
        prompt_ids = self._prompt_ids[choice // self.parsed.n]
        return tokenizer is not None and starts_inside(tokenizer.decode(prompt_ids[-8:], skip_special_tokens=False))

    @property
    def _called(self) -> str:
        """The finish reason of an answer that called: "stop" where tool_choice named the function, as OpenAI."""
        return "stop" if self.named_call else "tool_calls"

    def _answer(self, text: str, finish_reason: str | None, logprobs: dict | None = None, choice: int = 0) -> Answer:
        """A forced tool call's answer (a whole array of calls) goes back as tool_calls; calls the answer wrote,
        too, one cut by max_tokens as its stream sent it (finish reason "length"); anything else, a forced call
        cut by max_tokens included, as text (a reasoning model's: split from its thinking)."""
        forced = self.forced
        calls = forced.calls(text) if forced is not None and finish_reason == "stop" else None
        if calls is None and (self.reasoning or self.calls):
            parts = split_reasoning(text, self._inside(choice)) if self.reasoning else Split(content=text)
            written = parse_calls(parts.content, self.calls) if self.calls else None
            if written is not None:
                return Answer(written.content, self._called, logprobs, self._allowed(written.calls),
                              parts.reasoning or None)
            if self.calls and finish_reason == "length":  # cut inside a call: the partial call, as streamed
                cut = streamed_calls(parts.content, self.calls, None if self.parsed.parallel_tool_calls else 1)
                if cut.calls:
                    return Answer(cut.content, finish_reason, logprobs, self._allowed(cut.calls), parts.reasoning or None)
            return Answer(parts.content, finish_reason, logprobs, reasoning=parts.reasoning or None)
        if calls is None:
            return Answer(text, finish_reason, logprobs)
        return Answer(None, "stop" if forced.named else "tool_calls", logprobs, calls)  # type: ignore[union-attr]

    async def chunks(self) -> AsyncIterator[dict]:
        """OpenAI chunks (with n > 1, the choices' interleaved, each naming its index); the usage chunk
        comes last when the request asked for it, and with continuous_usage_stats every chunk carries
        the usage so far (vLLM's option). Raises EngineDeadError / InvalidRequestError mid-stream;
        closing the iterator aborts the request."""
        continuous = self.parsed.continuous_usage and self.shapes.include_usage
        # Calls of custom tools the model wrote as function calls go out as custom calls.
        custom = CustomCalls(self.parsed.custom_tools) if self.calls and self.parsed.custom_tools else None
        async with aclosing(self._chunks()) as chunks:
            async for chunk in chunks:
                if custom is not None:
                    chunk = custom.chunk(chunk)
                if continuous and chunk["choices"]:
                    prompt, completion = sum(map(len, self._prompt_ids)), sum(self._produced)
                    chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                      "total_tokens": prompt + completion}
                if self.token_ids is not None and chunk["choices"]:
                    chunk = self.token_ids.chunk(chunk)
                yield chunk

    async def _chunks(self) -> AsyncIterator[dict]:
        shapes, n = self.shapes, self.parsed.num_choices
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
        echoed = [not self.parsed.echo] * n
        held = [""] * n  # a forced tool call's text, turned into its calls at the end
        splitters: dict[int, ReasoningSplitter] = {}  # each choice's thinking from its answer
        call_streams: dict[int, CallStream] = {}  # each choice's tool calls written as text
        async for i, out in self._outputs_iter():
            if not echoed[i]:
                echoed[i] = True
                text, block = self._echo(i, out)
                yield shapes.chunk(text, None, logprobs=block, index=i)
            if out.logprobs:
                token_ids[i].extend(out.new_token_ids)
                logprobs[i].extend(out.logprobs)
            if self.forced is not None:
                held[i] += out.text_delta
                if out.finished:
                    answer = self._answer(held[i], out.finish_reason)
                    yield shapes.chunk(answer.text, None, logprobs=pending(i), index=i, tool_calls=answer.tool_calls)
                    yield shapes.chunk(None, answer.finish_reason, index=i)
            elif shapes.chat and (self.reasoning or self.calls):
                parts = self._split_delta(i, out, splitters)
                content, calls = parts.content, []
                if self.calls:
                    written = call_streams.setdefault(i, CallStream(
                        self.calls, None if self.parsed.parallel_tool_calls else 1))
                    content, calls = written.feed(content)
                    if out.finished:
                        rest = written.finish()
                        content, calls = content + (rest.content or ""), calls + rest.calls
                if parts.reasoning or content or calls:
                    yield shapes.chunk(content or None, None, logprobs=pending(i), index=i,
                                       reasoning=parts.reasoning or None, tool_calls=calls or None)
                if out.finished:
                    called = i in call_streams and call_streams[i].called
                    yield shapes.chunk(None, self._called if called and out.finish_reason != "length"
                                       else out.finish_reason, logprobs=pending(i),
                                       index=i)
            elif shapes.chat:
                if out.text_delta:
                    yield shapes.chunk(out.text_delta, None, logprobs=pending(i), index=i)
                if out.finished:
                    yield shapes.chunk(None, out.finish_reason, logprobs=pending(i), index=i)
            elif out.text_delta or out.finished:
                yield shapes.chunk(out.text_delta, out.finish_reason, logprobs=pending(i), index=i)
        if self.last is not None and shapes.include_usage:
            yield shapes.usage_chunk(self.last)


def _combined(lasts: list[RequestOutput], n: int) -> RequestOutput:
    """The finished outputs of every choice as one, for the usage: each prompt once (its first sample's
    count, cached tokens included), every choice's tokens."""
    firsts = lasts[::n]
    return replace(lasts[0], new_token_ids=[], text_delta="", logprobs=None, prompt_logprobs=None,
                   num_prompt_tokens=sum(f.num_prompt_tokens for f in firsts),
                   num_cached_tokens=sum(f.num_cached_tokens for f in firsts),
                   num_output_tokens=sum(last.num_output_tokens for last in lasts))


async def _embedded_prompts(engine: AsyncEngine, parsed: GenerateRequest) -> tuple[list, list[list[int]]]:
    """The request's prompt embeddings, decoded and checked, and each one's placeholder ids; none without them
    (torch is imported only then, so the gateway's start does not load it)."""
    if not parsed.prompt_embeds:
        return [], []
    from engine.prompt_embeds import PLACEHOLDER_TOKEN_ID, decode_all

    embeds = await decode_all(engine, parsed.prompt_embeds, parsed.truncate_prompt_tokens)
    return embeds, [[PLACEHOLDER_TOKEN_ID] * len(rows) for rows in embeds]
