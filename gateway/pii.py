"""Personal data and secrets in text, found by patterns and checksums (no model, nothing to download), and
replaced by placeholders that can be put back.

Kinds: `email`, `phone` (North American numbers and E.164 `+` numbers), `credit_card` (13-19 digits that
pass the Luhn check), `ssn` (US social security numbers, the impossible areas left out), `ip_address` (IPv4),
and `secret` (API keys and tokens of well-known shapes: OpenAI, Anthropic, AWS, GitHub, Slack, Google, JWTs,
PEM private keys). A pattern finds what has a fixed shape; a name or an address in free text is not found.

`Masker` numbers the values of each kind in the order it meets them (`[EMAIL_1]`, `[EMAIL_2]`, the same value
always the same placeholder), so a model can still tell two addresses apart and refer to one; `restore`
puts the values back in what the model writes."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

KINDS = ("secret", "email", "credit_card", "ssn", "phone", "ip_address")

# Each secret shape starts with its literal, which the regex engine scans for quickly; the word boundary
# before it is checked after (a leading \b would make it try every position).
_SECRETS = [re.compile(p) for p in (
    r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]+?-----END (?:[A-Z]+ )?PRIVATE KEY-----",
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
    r"AKIA[0-9A-Z]{16}(?![0-9A-Za-z])",
    r"gh[pousr]_[A-Za-z0-9]{36,}",
    r"xox[abprs]-[A-Za-z0-9-]{10,}",
    r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])",
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
)]
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# The numeric kinds are looked for only inside runs of digits and separators (one quick pass over the text).
_NUMERIC_RUN = re.compile(r"\d[\d .()-]{5,}\d")  # a leading `+` or `(` is taken in after (twice as fast)
_NUMERIC: dict[str, re.Pattern[str]] = {
    "credit_card": re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"),
    "ssn": re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
    "phone": re.compile(r"(?<![\w+])(?:\+1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]\d{4}(?!\d)"
                        r"|(?<![\w+])\+(?:[2-9]\d{0,2})[ .-]?\d{1,4}(?:[ .-]?\d{2,4}){2,4}(?!\d)"),
    "ip_address": re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"),
}
PLACEHOLDER = re.compile(r"\[(SECRET|EMAIL|CREDIT_CARD|SSN|PHONE|IP_ADDRESS)_(\d{1,4})\]")
MAX_PLACEHOLDER = len("[CREDIT_CARD_9999]")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _valid(kind: str, value: str) -> bool:
    if kind == "credit_card":
        digits = re.sub(r"\D", "", value)
        return 13 <= len(digits) <= 19 and luhn_valid(digits)
    if kind == "phone":
        return 10 <= sum(c.isdigit() for c in value) <= 15
    return True


def _numeric_runs(text: str) -> list[tuple[int, int]]:
    """Runs of digits and separators long enough to hold a number of interest, with a character of
    context either side (the numeric patterns' lookarounds read it)."""
    return [(max(m.start() - 2, 0), min(m.end() + 1, len(text))) for m in _NUMERIC_RUN.finditer(text)]


def _emails(text: str) -> list[tuple[int, int]]:
    """Addresses around each `@`: the pattern is run only near one, not from every position of the text."""
    spans: set[tuple[int, int]] = set()
    at = text.find("@")
    while at >= 0:
        for m in _EMAIL.finditer(text, max(at - 64, 0), min(at + 256, len(text))):
            if m.start() <= at < m.end():
                spans.add(m.span())
        at = text.find("@", at + 1)
    return sorted(spans)


def _candidates(text: str, kind: str, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans of `kind` in `text`, before overlaps between kinds are settled (`runs`: its numeric runs)."""
    if kind == "secret":
        return [m.span() for pattern in _SECRETS for m in pattern.finditer(text)
                if m.start() == 0 or not (text[m.start() - 1].isalnum() or text[m.start() - 1] == "_")]
    if kind == "email":
        return _emails(text)
    return [m.span() for left, right in runs for m in _NUMERIC[kind].finditer(text, left, right)
            if _valid(kind, m.group())]


def find(text: str, kinds: tuple[str, ...] = KINDS) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each value found, in order, none overlapping (the kind listed first in
    KINDS wins: a secret is not also an email, a card number is not also a phone number)."""
    found: list[tuple[int, int, str]] = []  # sorted by start, never overlapping
    runs = _numeric_runs(text) if any(k in _NUMERIC for k in kinds) else []
    for kind in KINDS:
        if kind not in kinds:
            continue
        for start, end in sorted(set(_candidates(text, kind, runs))):
            # of the disjoint spans taken, only the last one starting before `end` can overlap this one
            i = bisect.bisect_left(found, (end,))
            if i == 0 or found[i - 1][1] <= start:
                found.insert(i, (start, end, kind))
    return found


@dataclass
class Masker:
    """One call's placeholders: `mask` replaces values, `restore` puts them back."""

    kinds: tuple[str, ...] = KINDS
    placeholders: dict[str, str] = field(default_factory=dict)  # value -> placeholder
    values: dict[str, str] = field(default_factory=dict)  # placeholder -> value
    counts: dict[str, int] = field(default_factory=dict)  # kind -> values replaced (occurrences)
    numbered: dict[str, int] = field(default_factory=dict)  # kind -> distinct values (its last placeholder's number)

    def mask(self, text: str) -> str:
        spans = find(text, self.kinds)
        if not spans:
            return text
        out, last = [], 0
        for start, end, kind in spans:
            value = text[start:end]
            placeholder = self.placeholders.get(value)
            if placeholder is None:
                number = self.numbered[kind] = self.numbered.get(kind, 0) + 1
                placeholder = f"[{kind.upper()}_{number}]"
                self.placeholders[value], self.values[placeholder] = placeholder, value
            self.counts[kind] = self.counts.get(kind, 0) + 1
            out += [text[last:start], placeholder]
            last = end
        out.append(text[last:])
        return "".join(out)

    def restore(self, text: str) -> str:
        if not self.values or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(), m.group()), text)

    def held_back(self, text: str) -> int:
        """How many trailing characters of `text` may be the start of a placeholder still streaming in."""
        start = text.rfind("[")
        if start < 0 or "]" in text[start:] or len(text) - start >= MAX_PLACEHOLDER:
            return 0
        tail = text[start + 1:]
        return len(text) - start if re.fullmatch(r"[A-Z_]*\d{0,4}", tail) else 0
