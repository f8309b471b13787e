"""A reasoning model's thinking, split from its answer: `reasoning_content` and `content`, as vLLM's
reasoning parsers return them (`--reasoning-parser think`, one parser for the `<think>...</think>` models:
DeepSeek-R1 and its distills, Qwen3, QwQ).

The answer is thinking from its start when it opens with `<think>` (Qwen3 writes the tag) or when the
prompt already ends with it (DeepSeek-R1's template opens the block for the model); thinking ends at
`</think>`, and everything after it is the answer. An answer that never closes its block is all
thinking (cut by max_tokens); one that does not start in a block has none. Streamed, text that could be
the start of a tag is held back until the next delta tells."""

from __future__ import annotations

from dataclasses import dataclass

from engine.detokenizer import longest_partial_suffix

THINK_START, THINK_END = "<think>", "</think>"
PARSERS = ("think", "openai_gptoss")  # the second: gpt-oss's Harmony channels (engine/harmony.py)


def starts_inside(prompt_text: str) -> bool:
    """Does the prompt open the thinking block for the model (its last words are `<think>`)?"""
    return prompt_text.rstrip().endswith(THINK_START)


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Feed an answer's text deltas in order; each returns the reasoning and content now certain."""

    def __init__(self, inside: bool = False) -> None:
        self._state = "inside" if inside else "start"  # start -> inside -> content, or start -> content
        self._held = ""

    def feed(self, text: str) -> Split:
        text, self._held = self._held + text, ""
        out = Split()
        if self._state == "start":
            stripped = text.lstrip()
            if THINK_START.startswith(stripped) and len(stripped) < len(THINK_START):
                self._held = text  # could still open the block
                return out
            if stripped.startswith(THINK_START):
                self._state, text = "inside", stripped[len(THINK_START):]
            else:
                self._state = "content"
        if self._state == "inside":
            end = text.find(THINK_END)
            if end < 0:
                keep = longest_partial_suffix(text, (THINK_END,))
                out.reasoning, self._held = text[:len(text) - keep], text[len(text) - keep:]
                return out
            out.reasoning, text, self._state = text[:end], text[end + len(THINK_END):], "content"
        out.content = text
        return out

    def flush(self) -> Split:
        """The end of the answer: what was held back, as what it turned out to be."""
        held, self._held = self._held, ""
        return Split(reasoning=held) if self._state == "inside" else Split(content=held)


def split(text: str, inside: bool = False) -> Split:
    """A whole answer's reasoning and content."""
    splitter = ReasoningSplitter(inside)
    first, rest = splitter.feed(text), splitter.flush()
    return Split(first.reasoning + rest.reasoning, first.content + rest.content)

