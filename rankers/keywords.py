"""Instruction-type cues: which words a request uses, and which it starts with.

An answer's length follows what is asked ("write an essay", "list ten", "in one word", "what is"),
and the first words carry most of it. Binary presence over a fixed vocabulary: a few microseconds."""

from __future__ import annotations

import re

import numpy as np

CUES = (
    "write", "essay", "story", "poem", "list", "explain", "describe", "how", "what", "why", "who", "when",
    "where", "which", "is", "are", "can", "give", "name", "translate", "rewrite", "summarize", "summary",
    "classify", "one", "word", "words", "sentence", "sentences", "short", "brief", "briefly", "detailed",
    "code", "python", "function", "steps", "step", "plan", "recipe", "compare", "difference", "examples",
    "example", "ideas", "tips", "create", "generate", "article", "blog", "letter", "email", "paragraph",
    "yes", "no", "true", "false", "answer", "correct", "tweet", "title", "haiku", "joke", "song", "lyrics",
    "script", "outline", "guide", "table", "convert", "calculate", "find", "suggest", "recommend", "best",
    "help", "please", "i", "my", "you", "?",
)
FIRST_WORDS = 3
_WORD = re.compile(r"[a-z']+|\?")
NAMES = tuple(f"has_{c}" for c in CUES) + tuple(f"starts_{c}" for c in CUES)


def cue_features(text: str) -> np.ndarray:
    words = _WORD.findall(text.lower())
    present, first = set(words), set(words[:FIRST_WORDS])
    return np.asarray([c in present for c in CUES] + [c in first for c in CUES], dtype=np.float32)
