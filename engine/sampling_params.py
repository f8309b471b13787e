from __future__ import annotations

from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20  # alternatives to a sampled token's log-probability: OpenAI's and vLLM's limit


class InvalidRequestError(ValueError):
    """Bad input from a client: surfaces as a 4xx with this message."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    # Log-probabilities of each sampled token, with this many alternatives (engine/logprobs.py); None: none.
    logprobs: int | None = None
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
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}", "logprobs")

    @property
    def greedy(self) -> bool:
        # Below this, dividing logits by the temperature overflows: the limit is greedy anyway.
        return self.temperature < 1e-5
