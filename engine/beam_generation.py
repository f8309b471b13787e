"""vLLM's beam search on the OpenAI APIs: `use_beam_search: true` makes `n` the beam width (1 to 10) and the
choices the best beams, best first (engine/beam_search.py), each ending "stop" (an EOS or one of
`stop_token_ids` ended it, not in its text) or "length"; `length_penalty` (default 1) divides a beam's summed
log-probability by its length to that power. The search is deterministic: `temperature` is accepted and
changes nothing (as in vLLM, whose beams rank raw log-probabilities); a field it does not honour is a 400
naming it (engine/server/beam_fields.py). A BeamGeneration answers as an OpenAIGeneration does (`start`,
`whole`, `chunks`), so `pitstop engine serve` and the gateway's in-process engines run it alike; streamed,
the choices come as one chunk each when the search ends. `logprobs` (chat's with `top_logprobs`, completions'
k) gives each beam's tokens their log-probabilities and alternatives in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from engine.async_engine import AsyncEngine
from engine.beam_search import BeamSearchResult, beam_search
from engine.hints import SchedulingHints
from engine.logprobs import TokenLogprobs
from engine.openai_generation import OpenAIGeneration
from engine.openai_images import requested_images, with_images
from engine.openai_logprobs import LogprobShapes
from engine.openai_shapes import Answer, Shapes
from engine.outputs import RequestOutput
from engine.prompt_tokens import tokenize
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.server.errors import bad_request
from engine.server.protocol import GenerateRequest


class BeamGeneration:
    def __init__(self, engine: AsyncEngine, parsed: GenerateRequest, chat: bool, model_name: str,
                 response_id: str | None = None, lora: str | None = None) -> None:
        assert parsed.beam is not None
        self.engine, self.parsed, self.lora = engine, parsed, lora
        self.shapes = Shapes(chat, model_name, parsed.include_usage, response_id)
        self.started = time.monotonic()
        self.ttft_s: float | None = None  # the whole answer at once: when the search ends
        self.last: RequestOutput | None = None  # all choices' usage as one
        self.on_end: Callable[[Any, BaseException | None], None] | None = None  # as OpenAIGeneration's
        self._search: Callable[[], Any] | None = None

    async def start(self, priority: float | None = None, session_id: str | None = None,
                    pin_ttl_s: float | None = None, hints: SchedulingHints | None = None) -> None:
        """Renders and checks the prompts (a 400 before anything runs); the search runs in whole() or chunks().
        A session's pin is not taken: a search's many short requests leave no one sequence to pin."""
        engine, parsed = self.engine, self.parsed
        field = "messages" if self.shapes.chat else "prompt"
        if not hasattr(engine.engine.runner, "step_logprobs"):
            raise bad_request("beam search ranks the model's log-probabilities, which this engine (a simulation) "
                              "does not compute", "use_beam_search", "unsupported")
        try:
            urls = requested_images(engine, parsed)
            prompts = await tokenize(engine, parsed)
            images: list[Any] = []
            if urls:  # a chat is one prompt
                ids, images = await with_images(engine, urls, prompts[0])
                prompts = [ids]
            if parsed.truncate_prompt_tokens is not None:
                prompts = [ids[-parsed.truncate_prompt_tokens:] for ids in prompts]
            for ids in prompts:
                engine.validate_request(ids, None, parsed.resolved_params(len(ids), engine.max_model_len))
        except InvalidRequestError as exc:
            raise bad_request(str(exc), field if exc.param == "prompt" else exc.param, exc.code) from None
        eos = {*engine.engine.runner.eos_token_ids, *parsed.params.stop_token_ids}
        rank = parsed.priority if priority is None else priority

        def generate(ids: Sequence[int], params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
            return engine.generate(ids, params, request_id, priority=rank, hints=parsed.hints if hints is None
                                   else hints, lora=self.lora, images=images)

        async def search() -> list[BeamSearchResult]:
            return list(await asyncio.gather(*(beam_search(
                generate, ids, replace(parsed.beam, logprobs=parsed.params.logprobs,  # type: ignore[arg-type]
                                       max_tokens=parsed.resolved_params(len(ids), engine.max_model_len).max_tokens),
                eos, engine.max_model_len, f"{self.shapes.id}-{k}")
                for k, ids in enumerate(prompts))))

        self._search = search

    async def whole(self) -> dict:
        answers = await self._answers()
        assert self.last is not None
        return self.shapes.response(answers, self.last)

    async def chunks(self) -> AsyncIterator[dict]:
        answers = await self._answers()
        assert self.last is not None
        for i, answer in enumerate(answers):
            if self.shapes.chat:
                yield self.shapes.chunk(None, None, role=True, index=i)
            yield self.shapes.chunk(answer.text, answer.finish_reason, index=i, logprobs=answer.logprobs)
        if self.shapes.include_usage:
            yield self.shapes.usage_chunk(self.last)

    async def _answers(self) -> list[Answer]:
        """Each prompt's beams as choices (prompt k's j-th best is choice k * n + j); their usage as one in `last`."""
        assert self._search is not None, "start() first"
        error: BaseException | None = None
        try:
            results = await self._search()  # a cancel (the client left) cancels every beam's request
        except BaseException as exc:
            error = exc
            raise
        finally:
            if error is not None and self.on_end is not None:
                self.on_end(self, error)
        self.ttft_s = time.monotonic() - self.started
        answers, produced = [], 0
        skip = self.parsed.params.skip_special_tokens
        for result in results:
            for beam in result.beams:
                ids = list(beam.token_ids[:-1] if beam.finish_reason == "stop" else beam.token_ids)
                text = self.engine.tokenizer.decode(ids, skip_special_tokens=skip) if self.engine.tokenizer else ""
                answers.append(Answer(text, beam.finish_reason, self._logprobs(ids, beam.logprobs)))
                produced += len(beam.token_ids)
        self.last = RequestOutput(self.shapes.id, [], "", True, answers[0].finish_reason if answers else None,
                                  sum(r.num_prompt_tokens for r in results), sum(r.num_cached_tokens for r in results),
                                  produced)
        if self.on_end is not None:
            self.on_end(self, None)
        return answers


    def _logprobs(self, ids: list[int], logprobs: Sequence[TokenLogprobs]) -> dict | None:
        if self.parsed.params.logprobs is None:
            return None
        shapes = LogprobShapes(self.engine.tokenizer, self.shapes.chat, self.parsed.return_tokens_as_token_ids)
        return shapes.block(ids, list(logprobs[: len(ids)]))


def generation_for(engine: AsyncEngine, parsed: GenerateRequest, chat: bool, model_name: str,
                   response_id: str | None = None, reasoning_parser: str | None = None,
                   tool_call_parser: str | None = None, lora: str | None = None) -> OpenAIGeneration | BeamGeneration:
    """The request's generation: a beam search where it asks for one, else an OpenAIGeneration."""
    if parsed.beam is not None:
        return BeamGeneration(engine, parsed, chat, model_name, response_id, lora)
    return OpenAIGeneration(engine, parsed, chat, model_name, response_id, reasoning_parser=reasoning_parser,
                            tool_call_parser=tool_call_parser, lora=lora)
