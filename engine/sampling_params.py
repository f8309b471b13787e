from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.structured_output import OutputConstraint

MAX_TOP_LOGPROBS = 20  # alternatives to a sampled token's log-probability: OpenAI's and vLLM's limit
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for one token's bias: -100 bans it, +100 all but forces it


class InvalidRequestError(ValueError):
    """Bad input from a client: surfaces as a 4xx with this message."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True  # in the answer's text (vLLM's field)
    include_stop_str_in_output: bool = False  # a stop string that ends the answer stays in it (vLLM's field)
    seed: int | None = None
    # Log-probabilities of each sampled token, with this many alternatives (engine/logprobs.py); None: none.
    logprobs: int | None = None
    # Of each prompt token but the first, with this many alternatives (a completion's `echo`); None: none.
    prompt_logprobs: int | None = None
    # Logits processing, as OpenAI and vLLM define it (engine/model/logits_processors.py).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    top_k: int = 0  # 0 (or -1): no limit
    min_p: float = 0.0
    min_tokens: int = 0  # no EOS, stop token id or stop string ends the output before this many tokens
    # vLLM's masks (engine/banned_tokens.py): only these tokens are sampled (None: any); these words are
    # never generated (their token sequences filled in by the engine from its tokenizer).
    allowed_token_ids: tuple[int, ...] | None = None
    bad_words: tuple[str, ...] = ()
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    # What the answer must match: a JSON schema, a regex, a list of choices (engine/structured_output.py).
    constraint: OutputConstraint | None = None
    # The request asks for its prompt's embedding: the last prompt token's final hidden state, L2-normalised
    # (last-token pooling, as Qwen3-Embedding and e5-mistral use); the one token it samples is dropped.
    embed: bool = False
    # A reasoning model's thinking capped at this many tokens, then its end tag forced (engine/thinking_budget.py).
    thinking_token_budget: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequestError("temperature must be between 0 and 2", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p must be in (0, 1]", "top_p")
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", "max_tokens")
        if len(self.stop) > 4:
            raise InvalidRequestError("at most 4 stop sequences are allowed", "stop")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop sequences must be non-empty strings", "stop")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
                raise InvalidRequestError(f"{name} must be between 0 and {MAX_TOP_LOGPROBS}", name)
        self._check_processing()

    def _check_processing(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequestError(f"{name} must be between -2 and 2", name)
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise InvalidRequestError("repetition_penalty must be in (0, 2]", "repetition_penalty")
        if self.top_k < -1:
            raise InvalidRequestError("top_k must be -1 or 0 (no limit) or a positive number of tokens", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequestError("min_p must be between 0 and 1", "min_p")
        if self.min_tokens < 0:
            raise InvalidRequestError("min_tokens must be at least 0", "min_tokens")
        if self.thinking_token_budget is not None and self.thinking_token_budget < 0:
            raise InvalidRequestError("thinking_token_budget must be at least 0", "thinking_token_budget")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise InvalidRequestError("allowed_token_ids must not be empty", "allowed_token_ids")
        if any(t < 0 for t in self.allowed_token_ids or ()):
            raise InvalidRequestError("allowed_token_ids: token ids must not be negative", "allowed_token_ids")
        if any(not word.strip() for word in self.bad_words):
            raise InvalidRequestError("bad_words must be non-empty strings", "bad_words")
        if (self.allowed_token_ids is not None or self.bad_words) and self.constraint is not None:
            # A grammar's mask and these could leave no token to sample.
            raise InvalidRequestError("allowed_token_ids and bad_words cannot be combined with "
                                      f"'{self.constraint.param}'", "allowed_token_ids" if self.allowed_token_ids
                                      is not None else "bad_words")
        for token_id, bias in self.logit_bias:
            if token_id < 0:
                raise InvalidRequestError(f"logit_bias: token id {token_id} is negative", "logit_bias")
            if not (math.isfinite(bias) and -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS):
                raise InvalidRequestError(f"logit_bias: the bias of token {token_id} must be between "
                                          f"{-MAX_LOGIT_BIAS:g} and {MAX_LOGIT_BIAS:g}", "logit_bias")

    @property
    def greedy(self) -> bool:
        # Below this, dividing logits by the temperature overflows: the limit is greedy anyway.
        return self.temperature < 1e-5

    @property
    def masks_tokens(self) -> bool:
        """Some tokens may not be sampled: allowed_token_ids or bad_words."""
        return self.allowed_token_ids is not None or bool(self.bad_words_token_ids)

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def truncates(self) -> bool:
        """Sampling keeps only part of the distribution (top-p, top-k or min-p)."""
        return self.top_p < 1.0 or self.top_k > 0 or self.min_p > 0.0
