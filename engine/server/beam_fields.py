"""The fields of a beam search request (vLLM's `use_beam_search`, `length_penalty`), read with the others
(engine/server/protocol.py) and run by engine/beam_generation.py."""

from __future__ import annotations

from typing import Any

from engine.beam_search import BeamSearchParams
from engine.sampling_params import InvalidRequestError
from engine.server.errors import bad_request
from engine.server.fields import boolean, number

# The fields a beam search request may carry: what it honours, and what changes no answer.
_WITH_BEAMS = {"model", "prompt", "messages", "n", "max_tokens", "max_completion_tokens", "stream", "stream_options",
               "use_beam_search", "length_penalty", "ignore_eos", "stop_token_ids", "temperature",
               "skip_special_tokens", "include_stop_str_in_output", "truncate_prompt_tokens", "priority",
               "session_id", "rank_score", "program_start", "in_program", "chat_template_kwargs",
               "add_generation_prompt", "continue_final_message", "reasoning_effort", "user", "metadata", "store",
               "service_tier", "prompt_cache_key", "safety_identifier", "logprobs", "top_logprobs",
               "return_tokens_as_token_ids"}


def beam_params(body: dict[str, Any], n: int | None) -> BeamSearchParams | None:
    """The request's beam search (its max_tokens resolved once the prompt is known), None without one."""
    if not boolean(body, "use_beam_search"):
        if "length_penalty" in body:
            raise bad_request("'length_penalty' applies to beam search: set 'use_beam_search': true",
                              "length_penalty")
        return None
    for name, value in body.items():
        if name not in _WITH_BEAMS and value is not None:
            raise bad_request(f"'{name}' is not supported with 'use_beam_search'", name, "unsupported")
    penalty = number(body, "length_penalty")
    try:
        return BeamSearchParams(width=n or 1, max_tokens=1, length_penalty=1.0 if penalty is None else penalty,
                                ignore_eos=boolean(body, "ignore_eos"))
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param, "invalid_value") from None


