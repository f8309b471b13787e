"""Beam search over the engine, as vLLM's API server runs it (`use_beam_search`): each step asks the engine
for one token of every live beam with its 2 x width likeliest alternatives, and keeps the `width` likeliest
continuations of all beams together. The beams of a step are submitted at once, so the scheduler runs them
as one batch; each shares its prompt and its parent's tokens through the prefix cache, so a step computes
about a block of tokens a beam, not the whole sequence.

Candidates are ranked by their summed log-probability (the model's raw ones, as `logprobs` reports them);
an end-of-sequence candidate among a step's `width` best ends that beam (transformers' rule; the others
continue). A beam's final score is its summed log-probability over its length (without the EOS) to the
power `length_penalty` (transformers' and vLLM's), and the `width` best beams, finished or not, are the
answer, best first. With `logprobs` (k alternatives), every beam keeps each of its tokens' log-probability and
the step's k likeliest alternatives there (a step asks for the more of 2 x width and k; the ranking uses the
first 2 x width as always)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine.logprobs import TokenLogprobs
from engine.outputs import RequestOutput
from engine.sampling_params import MAX_TOP_LOGPROBS, InvalidRequestError, SamplingParams

MAX_BEAM_WIDTH = MAX_TOP_LOGPROBS // 2  # each beam's step asks for 2 x width alternatives

# engine.generate's shape: (token ids, params, request id) -> its outputs.
Generate = Callable[[Sequence[int], SamplingParams, str], AsyncIterator[RequestOutput]]


@dataclass(frozen=True)
class BeamSearchParams:
    width: int
    max_tokens: int
    length_penalty: float = 1.0
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives each token's log-probability comes with; None: none kept

    def __post_init__(self) -> None:
        if not 1 <= self.width <= MAX_BEAM_WIDTH:
            raise InvalidRequestError(f"beam search takes n from 1 to {MAX_BEAM_WIDTH} (the beam width)", "n")
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", "max_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}", "logprobs")


@dataclass(frozen=True)
class Beam:
    token_ids: tuple[int, ...]  # the answer's tokens, an ending EOS included
    cum_logprob: float
    finish_reason: str | None = None  # "stop" once an EOS ended it; else "length" at the end
    logprobs: tuple[TokenLogprobs, ...] = ()  # each token's, when the search keeps them

    def score(self, length_penalty: float) -> float:
        length = len(self.token_ids) - (self.finish_reason == "stop")
        return self.cum_logprob / max(length, 1) ** length_penalty


@dataclass
class BeamSearchResult:
    beams: list[Beam]  # the best `width`, best first
    num_prompt_tokens: int
    num_cached_tokens: int = 0  # the first step's prefix cache hit (later steps reuse the beams' own blocks)
    steps: int = 0
    computed_tokens: list[int] = field(default_factory=list)  # tokens each step's requests prefilled


async def beam_search(generate: Generate, prompt_ids: Sequence[int], params: BeamSearchParams,
                      eos_ids: Collection[int], max_model_len: int, request_id: str) -> BeamSearchResult:
    """Run the search; `generate` is the engine's (its lora, images and priority bound by the caller)."""
    width, prompt = params.width, list(prompt_ids)
    keep = params.logprobs
    step_params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=max(2 * width, keep or 0), ignore_eos=True)
    live, done = [Beam((), 0.0)], []
    result = BeamSearchResult([], len(prompt))
    for step in range(params.max_tokens):
        if not live or len(prompt) + step >= max_model_len:
            break
        outputs = await asyncio.gather(*(
            _one_token(generate, prompt + list(beam.token_ids), step_params, f"{request_id}-{step}-{i}")
            for i, beam in enumerate(live)))
        if step == 0:
            result.num_cached_tokens = outputs[0].num_cached_tokens
        result.computed_tokens.append(sum(o.num_prompt_tokens - o.num_cached_tokens for o in outputs))
        result.steps += 1
        candidates = sorted(((beam.cum_logprob + logprob, beam, token, _kept(out, logprob, keep))
                             for beam, out in zip(live, outputs, strict=True)
                             for token, logprob in _alternatives(out)[: 2 * width]), key=lambda c: -c[0])
        live = []
        for rank, (cum, beam, token, kept) in enumerate(candidates):
            if token in eos_ids and not params.ignore_eos:
                if rank < width:  # an ending among the step's best ends that beam
                    done.append(Beam((*beam.token_ids, token), cum, "stop", (*beam.logprobs, *kept)))
                continue
            live.append(Beam((*beam.token_ids, token), cum, logprobs=(*beam.logprobs, *kept)))
            if len(live) == width:
                break
    finished = done + [replace(b, finish_reason="length") for b in live]
    result.beams = sorted(finished, key=lambda b: -b.score(params.length_penalty))[:width]
    return result


async def _one_token(generate: Generate, token_ids: list[int], params: SamplingParams,
                     request_id: str) -> RequestOutput:
    last: RequestOutput | None = None
    async for out in generate(token_ids, params, request_id):
        last = out if last is None else last.followed_by(out)
    assert last is not None and last.logprobs, "a one-token request answers with its log-probabilities"
    return last


def _alternatives(out: RequestOutput) -> list[tuple[int, float]]:
    first: Any = out.logprobs[0]  # type: ignore[index]
    return list(zip(first.top_ids, first.top_logprobs, strict=True))


def _kept(out: RequestOutput, logprob: float, keep: int | None) -> tuple[TokenLogprobs, ...]:
    """What a beam keeps for the token it takes from `out`: its log-probability and the step's `keep` best."""
    if keep is None:
        return ()
    step: Any = out.logprobs[0]  # type: ignore[index]
    return (TokenLogprobs(logprob, step.top_ids[:keep], step.top_logprobs[:keep]),)
