"""IncrementalDetokenizer: turns a request's output tokens, fed a step at a time, into text deltas.

Two things are held back until they are settled:
- an incomplete UTF-8 character (byte-level BPE may split one across tokens): we decode a small window
  of recent tokens and only emit once the window no longer ends in U+FFFD;
- text that could be the start of a stop string: emitted only once it can no longer become one.

When a stop string appears, the output is cut right before it (OpenAI semantics; right after it with
`include_stop`, vLLM's include_stop_str_in_output) and `stop` names it; the caller finishes the request. `flush()` releases what is held when the request ends otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Prompt tokens decoded along with the first outputs, so tokenizers that drop a leading space when
# decoding a word on its own (SentencePiece) still produce it.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...


@dataclass(frozen=True)
class TextDelta:
    text: str
    stop: str | None = None  # the stop string that ended the output, when one did


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Decoder,
        stop: Sequence[str] = (),
        prompt_token_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        include_stop: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop if s)
        self.skip_special_tokens = skip_special_tokens
        self.include_stop = include_stop  # the stop string stays at the end of the text (vLLM's option)
        context = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._ids = context
        self._prefix_offset = 0  # window start: tokens before it are fully reflected in emitted text
        self._read_offset = len(context)  # tokens before it have been turned into text
        self._held = ""  # decoded text not yet emitted (may start a stop string)
        self.text = ""  # everything emitted so far
        self.stop: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    def add(self, token_ids: Iterable[int], check_stop: bool = True) -> TextDelta:
        """Feed the step's new token ids; returns the text that is now safe to emit. Without
        `check_stop` (under a request's min_tokens) a stop string in the text does not end it, but what
        could begin one is still held back: a stop string that min_tokens is reached inside of ends the
        output, as in vLLM, whose stop check looks back a stop string's length into the text."""
        if self.stopped:
            return TextDelta("")
        self._ids.extend(token_ids)
        return self._emit(self._held + self._decode_new(final=False), final=False, check_stop=check_stop)

    def flush(self) -> str:
        """The request ended (EOS, length, abort): emit whatever was held back."""
        if self.stopped:
            return ""
        return self._emit(self._held + self._decode_new(final=True), final=True).text

    def _decode_new(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        window = self._ids[self._prefix_offset :]
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(window)
        if not final and (len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR)):
            return ""  # mid-character (or nothing visible yet): wait for more tokens
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return new_text[len(prefix_text) :]

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)

    def _emit(self, buffer: str, final: bool, check_stop: bool = True) -> TextDelta:
        hit = _earliest_stop(buffer, self.stop_strings) if check_stop else None
        if hit is not None:
            index, stop = hit
            self.stop = stop
            return self._release(buffer[:index + (len(stop) if self.include_stop else 0)], held="", stop=stop)
        hold = 0 if final else longest_partial_suffix(buffer, self.stop_strings)
        return self._release(buffer[: len(buffer) - hold], held=buffer[len(buffer) - hold :])

    def _release(self, text: str, held: str, stop: str | None = None) -> TextDelta:
        self._held = held
        self.text += text
        return TextDelta(text, stop)


def _earliest_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    found = [(index, stop) for stop in stops if (index := text.find(stop)) >= 0]
    return min(found, key=lambda hit: hit[0]) if found else None


def longest_partial_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
