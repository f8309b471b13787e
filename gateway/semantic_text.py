"""What the semantic cache compares, and the guard that two compared texts must pass besides their
embeddings' similarity (gateway/semantic_cache.py).

Only the last user message (a completion's prompt) is compared by meaning; everything else in the
request must be equal, as for the exact cache: the system prompt, the earlier turns, tools, sampling.
Embedding the whole conversation would let a long shared history outweigh a different last question.

The guard: a paraphrase keeps its literals, a different question often changes only them ("17 x 23" vs
"17 x 24"), where an embedding barely moves. So the numbers (digits and number words), quoted strings
(in any case), code spans (as written) and the count of negations must be the same, in the same order,
and two texts of the very same words in another order ("Celsius to Fahrenheit" vs "Fahrenheit to
Celsius") do not match. Spacing never counts."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from gateway.backends.base import Kind

_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_WORDS = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
    r"thousand|million|billion|trillion|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
    r"half|quarter|twice|double|triple|dozen)\b", re.IGNORECASE)
_CODE = re.compile(r"```.*?```|`[^`]+`", re.DOTALL)  # fenced and inline, compared as written
# Double, curly and single quotes (not an apostrophe: "it's", "Janet's"), compared in any case.
_QUOTED = re.compile(r"\"[^\"]+\"|“[^”]+”|‘[^’]+’|(?<!\w)'[^']+'(?!\w)")
_NEGATIONS = re.compile(r"\b(?:not|no|never|none|nor|neither|without|except|cannot)\b|n't\b", re.IGNORECASE)
_WORDS = re.compile(r"\w+")
_TEXT_PART_TYPES = ("text", "input_text")
FINGERPRINT_BYTES = 24


@dataclass(frozen=True)
class Compared:
    text: str  # the last user message's text, or the prompt
    rest: dict  # the body without it: what must be equal (the bucket)


def compared_part(kind: Kind, body: dict) -> Compared | None:
    """The text a request is compared by, and the rest of its body; None where it has none to compare:
    a chat not ending with a user message of text only (an image is not compared), a completion whose
    prompt is not one string, or one that echoes its prompt (the answer holds the prompt)."""
    if kind == "completion":
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or body.get("echo"):
            return None
        return Compared(prompt, {k: v for k, v in body.items() if k != "prompt"})
    if kind != "chat":
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    text = _text_only(last.get("content"))
    if last.get("role") != "user" or text is None:
        return None
    rest_last = {k: v for k, v in last.items() if k != "content"}
    return Compared(text, {**body, "messages": [*messages[:-1], rest_last]})


def _text_only(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PART_TYPES or not isinstance(part.get("text"), str):
            return None
        texts.append(part["text"])
    return "\n".join(texts)


def embedded(text: str) -> str:
    """The text as it is embedded: Unicode-normalised, spacing collapsed, lower case, without the final
    punctuation, so that re-asks differing only in those embed the same."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).lower().rstrip("?.!。 ")


def literals(text: str) -> dict[str, list[str]]:
    """What the guard requires equal, by kind, in the text's order."""
    normalized = " ".join(unicodedata.normalize("NFKC", text).split())  # spacing is formatting, not meaning
    prose = _CODE.sub(" ", normalized)
    return {"numbers": _NUMBERS.findall(normalized),
            "number_words": [w.lower() for w in _NUMBER_WORDS.findall(prose)],
            "quoted": [*_CODE.findall(normalized), *(q.casefold() for q in _QUOTED.findall(prose))],
            "negations": [str(len(_NEGATIONS.findall(prose)))]}


def words(text: str) -> list[str]:
    return _WORDS.findall(unicodedata.normalize("NFKC", text).lower())


def fingerprint(text: str) -> bytes:
    """24 bytes: 8 of the guard's literals, 8 of the text's words as a bag, 8 of them in order."""
    parts = literals(text)
    in_order = words(text)
    return (_digest([item for kind in parts.values() for item in (*kind, "|")]) + _digest(sorted(in_order))
            + _digest(in_order))


def compatible(a: bytes, b: bytes) -> bool:
    """The guard: the same literals, and not the same words in another order."""
    same_literals, same_bag, same_order = a[:8] == b[:8], a[8:16] == b[8:16], a[16:] == b[16:]
    return same_literals and (same_order or not same_bag)


def _digest(parts: list[str]) -> bytes:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
