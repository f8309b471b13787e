"""vLLM's `allowed_token_ids` and `bad_words`: which tokens a request may not sample next.

- `allowed_token_ids`: only these tokens may be sampled (every other logit is -inf).
- `bad_words`: words that are never generated. As vLLM does it, each word is tokenized as it would
  start the text and, where that gives another first token of the same length, as it would follow a
  space; a word's last token is banned whenever the tokens generated just before it are the rest of
  the word (a one-token word is always banned). Only the answer's tokens are matched, not the prompt's.

Both are masks applied before `min_tokens`, `logit_bias` and the penalties
(engine/model/logits_processors.py), so draft checks and draft models see them as the sampled rows do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from engine.sampling_params import InvalidRequestError, SamplingParams


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...


def bad_words_token_ids(words: Sequence[str], tokenizer: Encoder) -> tuple[tuple[int, ...], ...]:
    """Each word's token sequences: as it starts the text, and (when that differs in its first token
    only) as it follows a space, vLLM's `update_from_tokenizer` rule."""
    sequences: list[tuple[int, ...]] = []
    for word in words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        if plain:
            sequences.append(plain)
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        if spaced and (not plain or (spaced[0] != plain[0] and len(spaced) == len(plain))):
            sequences.append(spaced)
    return tuple(dict.fromkeys(sequences))


def with_bad_word_ids(params: SamplingParams, tokenizer: Encoder | None) -> SamplingParams:
    """`params` with its bad words tokenized (once, as the request is added)."""
    if not params.bad_words or params.bad_words_token_ids or tokenizer is None:
        return params
    return replace(params, bad_words_token_ids=bad_words_token_ids(params.bad_words, tokenizer))


def check_token_ids(params: SamplingParams, vocab_size: int | None, has_tokenizer: bool,
                    eos_token_ids: Sequence[int] = ()) -> None:
    """The request's token ids (logit_bias, allowed_token_ids) inside the vocabulary; bad words need a
    tokenizer to become tokens; and allowed_token_ids leave a token to sample (`params` with its bad words
    tokenized, `eos_token_ids` the model's)."""
    if params.bad_words and not has_tokenizer:
        raise InvalidRequestError("this engine has no tokenizer to find the tokens of 'bad_words'", "bad_words")
    _check_something_is_allowed(params, eos_token_ids)
    if vocab_size is None:
        return
    if any(t >= vocab_size for t, _ in params.logit_bias):
        raise InvalidRequestError(f"logit_bias: token ids must be below this model's vocabulary size {vocab_size}",
                                  "logit_bias")
    if params.allowed_token_ids is not None and any(t >= vocab_size for t in params.allowed_token_ids):
        raise InvalidRequestError(f"allowed_token_ids: token ids must be below this model's vocabulary size "
                                  f"{vocab_size}", "allowed_token_ids")


def _check_something_is_allowed(params: SamplingParams, eos_token_ids: Sequence[int]) -> None:
    """A request whose masks leave no token to sample from its first step is refused here, rather than
    sampled from a row of -inf (engine/model/logits_processors.py keeps later steps safe)."""
    if params.allowed_token_ids is None:
        return
    allowed = set(params.allowed_token_ids)
    banned = {word[0] for word in params.bad_words_token_ids if len(word) == 1}
    if allowed <= banned:
        raise InvalidRequestError("allowed_token_ids: every allowed token is a one-token word of 'bad_words', "
                                  "which leaves nothing to sample", "allowed_token_ids")
    ending = {*params.stop_token_ids, *(() if params.ignore_eos else eos_token_ids)}
    if params.min_tokens and allowed <= ending | banned:
        raise InvalidRequestError(f"allowed_token_ids: every allowed token ends the answer (a stop or end-of-text "
                                  f"token), and min_tokens asks for {params.min_tokens} before it may end",
                                  "allowed_token_ids")


def banned_next(bad_words: Sequence[Sequence[int]], generated: Sequence[int]) -> list[int]:
    """The tokens that would complete a bad word after the answer's tokens so far."""
    banned = []
    for word in bad_words:
        prefix = len(word) - 1
        if prefix > len(generated):
            continue
        if prefix == 0 or list(generated[len(generated) - prefix:]) == list(word[:prefix]):
            banned.append(word[-1])
    return banned
