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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import regex  # partial matches, for `could_be_short`

# A reply that commits to one option: "B", "B)", "(c).", "Answer: D", "The answer is A\n..." .
_CHOICE = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)?\s*(?:is)?\s*:?\s*\(?([A-Ea-e])(?:[).:]|\s*$|\s*\n)",
    re.IGNORECASE)
# A reply that is a number and nothing else (a trailing period allowed): "42", "-3.5", "1,200.".
_NUMBER = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)\s*\.?\s*$")


# The same grammar, matched partially: could the start of a reply still turn out a short answer?
_COULD_BE = (regex.compile(_NUMBER.pattern), regex.compile(_CHOICE.pattern, regex.IGNORECASE))


def could_be_short(start: str) -> bool:
    """Could a reply beginning with `start` still be a short answer? A stream is held back while it
    can (gateway/verify.py): free text like "The largest planet" or "Jupiter" is let go at its first
    word, "The answer is" is held on."""
    head = start.lstrip()
    return not head or any(p.match(head, partial=True) is not None for p in _COULD_BE)


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

    def renamed(self, names: dict[str, str]) -> VerifyPolicy:
        """The same policy under other model names (a route group's names to its router's)."""
        return replace(self, verifiers=tuple(names.get(v, v) for v in self.verifiers),
                       escalate_to=names.get(self.escalate_to, self.escalate_to))

    def verifiers_for(self, pick: str) -> list[str]:
        return [v for v in self.verifiers if v not in (pick, self.escalate_to)][: self.count]

    @staticmethod
    def accept(pick_answer: str | None, verifier_answers: Sequence[str | None]) -> bool:
        """Serve the pick's answer when every verifier commits to the same short answer."""
        return pick_answer is not None and all(a == pick_answer for a in verifier_answers)


# Until a pick's own outcomes are logged: every answer checked, a third escalated. On RouterBench's
# training replies a cheap model's short answer disagrees with the verifier's on 17-40% (median 33%)
# of prompts (bench/README.md, stop 26); checked-always is the upper bound of what it can cost.
PRIOR_CHECKED = 1.0
PRIOR_ESCALATED = 1 / 3
VERIFY_OUTCOMES = ("accepted", "escalated", "unchecked", "escalation_failed")


@dataclass(frozen=True)
class VerifyRates:
    """How often a verified pick's answer was checked, and how often that sent the request on to the
    escalation model (whose call was made, served or not), per routed model: what verifying adds to a
    pick's expected cost (routers/calibration.py). A model with fewer than `min_requests` logged
    outcomes takes the pooled rates of all picks, or the prior where the pool is that small too."""

    checked: dict[str, float]
    escalated: dict[str, float]
    counts: dict[str, int]
    pooled: tuple[float, float] = (PRIOR_CHECKED, PRIOR_ESCALATED)

    @classmethod
    def from_outcomes(cls, routed: Sequence[str | None], outcomes: Sequence[str | None],
                      min_requests: int = 20) -> VerifyRates:
        """`routed`: the router's pick of each logged request; `outcomes`: its verify outcome (None where
        the policy did not apply: the strongest model picked, a stream, a predicted quality above `below`)."""
        tally: dict[str, list[int]] = {}
        for model, outcome in zip(routed, outcomes, strict=True):
            if model is None or outcome not in VERIFY_OUTCOMES:
                continue
            counts = tally.setdefault(model, [0, 0, 0])
            counts[0] += 1
            counts[1] += outcome != "unchecked"
            counts[2] += outcome in ("escalated", "escalation_failed")
        total = [sum(c[k] for c in tally.values()) for k in range(3)]
        pooled = (total[1] / total[0], total[2] / total[0]) if total[0] >= min_requests else (
            PRIOR_CHECKED, PRIOR_ESCALATED)
        kept = {m: c for m, c in tally.items() if c[0] >= min_requests}
        return cls({m: c[1] / c[0] for m, c in kept.items()}, {m: c[2] / c[0] for m, c in kept.items()},
                   {m: c[0] for m, c in tally.items()}, pooled)

    def of(self, model: str) -> tuple[float, float]:
        """(checked, escalated) shares of `model`'s verified picks."""
        if model in self.checked:
            return self.checked[model], self.escalated[model]
        return self.pooled

    def renamed(self, names: dict[str, str]) -> VerifyRates:
        """The same rates under other model names (a route group's names to its router's)."""
        return VerifyRates({names.get(m, m): v for m, v in self.checked.items()},
                           {names.get(m, m): v for m, v in self.escalated.items()},
                           {names.get(m, m): v for m, v in self.counts.items()}, self.pooled)

    def to_dict(self) -> dict[str, object]:
        return {"checked": self.checked, "escalated": self.escalated, "logged": self.counts,
                "pooled": {"checked": self.pooled[0], "escalated": self.pooled[1]}}


def expected_overhead(policy: VerifyPolicy, rates: VerifyRates, pick: str, predicted_quality: float | np.ndarray,
                      costs: Mapping[str, float | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """What verifying `pick` adds, on average, to what serving it spends (its verifiers' calls at its
    checked rate, the escalation's call at its escalated rate), and the share of its requests the
    escalation model serves instead; per request where `predicted_quality` and `costs` (each model's
    predicted cost; one missing is not counted) are arrays. One rule for calibrating a route group
    (routers/calibration.py) and for tallying what it serves since (gateway/routing.py)."""
    zero = np.zeros(np.shape(predicted_quality))
    verifiers = policy.verifiers_for(pick)
    if pick == policy.escalate_to or not verifiers:  # served as it is (`unchecked` with no verifier)
        return zero, zero
    applies = under(predicted_quality, policy.below)
    checked, escalated = rates.of(pick)
    verifying = sum((costs[v] for v in verifiers if v in costs), zero)
    strong = costs.get(policy.escalate_to, zero)
    return np.where(applies, checked * verifying + escalated * strong, 0.0), np.where(applies, escalated, 0.0)
