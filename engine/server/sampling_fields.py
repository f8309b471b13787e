"""A request's sampling fields as SamplingParams: temperature and cuts, stops, penalties, logit_bias,
log-probabilities, and the grammar that holds the answer (response_format, vLLM's structured_outputs
and its older guided_* fields, or a forced tool call)."""

from __future__ import annotations

import math

from engine.sampling_params import MAX_TOP_LOGPROBS, InvalidRequestError, SamplingParams
from engine.server.errors import bad_request
from engine.server.fields import boolean, field, int_list, integer, number
from engine.structured_output import OutputConstraint, constraint_from_fields

MAX_LOGIT_BIAS_TOKENS = 300  # OpenAI's limit on logit_bias entries


def logprobs_asked(body: dict, chat: bool) -> int | None:
    """How many alternatives to each sampled token's log-probability the request wants; None: none."""
    if not chat:  # completions: `logprobs` is that number
        value = integer(body, "logprobs")
        if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
            raise bad_request(f"'logprobs' must be between 0 and {MAX_TOP_LOGPROBS}", "logprobs", "invalid_value")
        return value
    top = integer(body, "top_logprobs")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs", "invalid_value")
    if not boolean(body, "logprobs"):
        if top:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top or 0


def sampling_params(body: dict, max_tokens: int, logprobs: int | None = None,
                     prompt_logprobs: int | None = None, forced: OutputConstraint | None = None) -> SamplingParams:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if field(body, "spaces_between_special_tokens", bool, "a boolean") is False:
        raise bad_request("'spaces_between_special_tokens' false is not supported: special tokens are decoded as the "
                          "tokenizer joins them", "spaces_between_special_tokens", "unsupported")
    temperature, top_p = number(body, "temperature"), number(body, "top_p")
    stop_token_ids = body.get("stop_token_ids")
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
        stop_token_ids=tuple(int_list(stop_token_ids, "stop_token_ids") if stop_token_ids is not None else ()),
        ignore_eos=boolean(body, "ignore_eos"),
        skip_special_tokens=field(body, "skip_special_tokens", bool, "a boolean") is not False,
        include_stop_str_in_output=boolean(body, "include_stop_str_in_output"),
        seed=integer(body, "seed"),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        presence_penalty=number(body, "presence_penalty") or 0.0,
        frequency_penalty=number(body, "frequency_penalty") or 0.0,
        repetition_penalty=_or(number(body, "repetition_penalty"), 1.0),
        logit_bias=_logit_bias(body),
        top_k=integer(body, "top_k") or 0,
        min_p=number(body, "min_p") or 0.0,
        min_tokens=integer(body, "min_tokens") or 0,
        allowed_token_ids=_allowed_token_ids(body),
        bad_words=_bad_words(body),
        constraint=_constraint(body, forced),
        thinking_token_budget=integer(body, "thinking_token_budget"),
    )


GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}  # vLLM's older names for structured_outputs' keys


def _constraint(body: dict, forced: OutputConstraint | None) -> OutputConstraint | None:
    structured = body.get("structured_outputs")
    guided = {key: body[name] for name, key in GUIDED_FIELDS.items() if body.get(name) is not None}
    if guided:
        if structured is not None:
            raise InvalidRequestError("send 'structured_outputs' or the guided_* fields, not both", "structured_outputs")
        structured = guided
    asked = constraint_from_fields(body.get("response_format"), structured)
    if forced is not None and asked is not None:
        raise InvalidRequestError("a forced tool call is its own structure: 'tool_choice' cannot be combined with "
                                  f"'{asked.param}'", "tool_choice")
    return forced or asked


def _allowed_token_ids(body: dict) -> tuple[int, ...] | None:
    value = body.get("allowed_token_ids")
    return None if value is None else tuple(int_list(value, "allowed_token_ids"))


def _bad_words(body: dict) -> tuple[str, ...]:
    value = body.get("bad_words")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
        raise bad_request("'bad_words' must be a list of strings", "bad_words", "invalid_type")
    return tuple(value)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias}: keys are token ids written as strings (JSON has no other keys)."""
    bias = field(body, "logit_bias", dict, "an object mapping token ids to biases")
    if not bias:
        return ()
    if len(bias) > MAX_LOGIT_BIAS_TOKENS:
        raise bad_request(f"'logit_bias' may hold at most {MAX_LOGIT_BIAS_TOKENS} tokens", "logit_bias")
    pairs = []
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()):
            raise bad_request(f"'logit_bias' keys must be token ids, not {key[:32]!r}", "logit_bias", "invalid_value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad_request(f"'logit_bias[{key}]' must be a number", "logit_bias", "invalid_type")
        pairs.append((int(key), float(value)))
    return tuple(pairs)
