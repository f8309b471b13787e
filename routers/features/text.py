"""Prompt statistics and the prompt's focus (its last question), computed in microseconds.

Few-shot and chat prompts put the actual request at the end after a long, often identical preamble;
an encoder that keeps only the first 256 tokens then sees the same text for every prompt of a task.
`focus` is the last blank-line separated block (grown backwards until it has some substance).
Character classes are counted with str.translate (C loops), not per-character Python."""

from __future__ import annotations

import math
import re
import string

import numpy as np

FOCUS_MIN_CHARS = 40
FOCUS_MAX_CHARS = 2000

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"\w+")
_OPTION = re.compile(r"(?m)^\s*\(?[A-J][).:]\s")
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};]\s*$|\bfunction\b|\bimport\b", re.M)
_MATH = re.compile(r"[=+\-*/^%]|\\frac|\\sqrt|\$")
_DROP_DIGITS = str.maketrans("", "", string.digits)
_DROP_UPPER = str.maketrans("", "", string.ascii_uppercase)

STAT_NAMES = (
    "log_chars", "log_spaces", "log_lines", "log_blocks", "log_focus_chars", "focus_share",
    "questions", "numbers", "max_number_digits", "digit_share", "upper_share", "non_ascii_share",
    "mean_word_len", "options", "code_marks", "math_marks", "answer_marks", "log_distinct_words",
)


def focus(prompt: str) -> str:
    blocks = [b for b in prompt.split("\n\n") if b.strip()]
    if not blocks:
        return prompt[-FOCUS_MAX_CHARS:]
    text = blocks[-1]
    for block in reversed(blocks[:-1]):
        if len(text.strip()) >= FOCUS_MIN_CHARS:
            break
        text = block + "\n\n" + text
    return text[-FOCUS_MAX_CHARS:]


def prompt_stats(prompt: str, focus_text: str | None = None) -> np.ndarray:
    f = focus(prompt) if focus_text is None else focus_text
    n_f = max(len(f), 1)
    words = _WORD.findall(f)
    numbers = _NUMBER.findall(f)
    log1p = math.log1p
    values = (
        log1p(len(prompt)), log1p(prompt.count(" ")), log1p(prompt.count("\n")), log1p(prompt.count("\n\n")),
        log1p(len(f)), len(f) / max(len(prompt), 1), float(f.count("?")), log1p(len(numbers)),
        float(max(map(len, numbers), default=0)),
        (len(f) - len(f.translate(_DROP_DIGITS))) / n_f,
        (len(f) - len(f.translate(_DROP_UPPER))) / n_f,
        (len(f) - len(f.encode("ascii", "ignore"))) / n_f,
        sum(map(len, words)) / max(len(words), 1), float(len(_OPTION.findall(f))),
        log1p(len(_CODE.findall(f))), log1p(len(_MATH.findall(f))),
        log1p(prompt.count("Answer:") + prompt.count("answer:")), log1p(len({w.lower() for w in words})),
    )
    return np.asarray(values, dtype=np.float32)
