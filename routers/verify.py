"""Verify a cheap model's short answer with another model before paying for the strongest one.

A router that reads only the prompt cannot see which easy-looking prompts a cheap model gets wrong;
its answer can. Where the chosen model's reply is a short answer (a choice letter or a number), a
second cheap model is asked the same request: if every verifier gives the same answer, the cheap
answer is served; if not, the request is escalated to the group's strongest model (FrugalGPT's
cascade, with agreement as the scorer). Free-text and code answers cannot be compared this way and
are served as they are, with no verifier call.

One policy, two callers: the gateway's route groups (`verify:` in the config, gateway/verify.py) and
the evaluation harness (routers/verify_eval.py), so what is measured is what serves."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A reply that commits to one option: "B", "B)", "(c).", "Answer: D", "The answer is A\n..." .
_CHOICE = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)?\s*(?:is)?\s*:?\s*\(?([A-Ea-e])(?:[).:]|\s*$|\s*\n)",
    re.IGNORECASE)
# A reply that is a number and nothing else (a trailing period allowed): "42", "-3.5", "1,200.".
_NUMBER = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)\s*\.?\s*$")


def short_answer(text: str | None) -> str | None:
    """The answer a short reply commits to, normalised ("B", "1200"); None for anything else."""
    if not text:
        return None
    text = text.strip()
    number = _NUMBER.match(text)
    if number:
        return number.group(1).replace(",", "")
    choice = _CHOICE.match(text)
    return choice.group(1).upper() if choice else None


def under(predicted_quality: float | np.ndarray, below: float) -> bool | np.ndarray:
    """The `below` rule, also on arrays (the replay): 1.0 and more take every pick, even one the tier
    prior predicts at exactly 1."""
    return np.logical_or(np.asarray(predicted_quality) < below, below >= 1.0)


@dataclass(frozen=True)
class VerifyPolicy:
    """`verifiers`: the models asked, in order of preference (a pick is never its own verifier);
    `count`: how many of them must agree; `escalate_to`: the model served when one does not;
    `below`: verify only picks whose predicted quality is below this (1.0 and more: every pick)."""

    verifiers: tuple[str, ...]
    escalate_to: str
    count: int = 1
    below: float = 1.0

    def __post_init__(self) -> None:
        assert self.count >= 1 and self.verifiers, "a verify policy needs at least one verifier"

    def applies(self, pick: str, predicted_quality: float | None) -> bool:
        """Before the pick is called: is its answer to be checked if it is a short one?"""
        if pick == self.escalate_to:
            return False
        return predicted_quality is None or bool(under(predicted_quality, self.below))

    def verifiers_for(self, pick: str) -> list[str]:
        return [v for v in self.verifiers if v not in (pick, self.escalate_to)][: self.count]

    @staticmethod
    def accept(pick_answer: str | None, verifier_answers: Sequence[str | None]) -> bool:
        """Serve the pick's answer when every verifier commits to the same short answer."""
        return pick_answer is not None and all(a == pick_answer for a in verifier_answers)
