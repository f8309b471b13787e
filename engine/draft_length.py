"""Draft lengths that pay for themselves: each step's n-gram drafts cut to the length that maximises the
step's expected output tokens per second (goodput, as SmartSpec chooses speculation lengths: Liu et al.,
2024), priced by a step-time model (engine/step_time.py: the simulator's own, or a profile of the real
runner) and each request's recent acceptance.

A step that checks up to d drafts for each of its decoding requests yields, in expectation, one token
per request plus E_i(d) = a_i + a_i^2 + ... + a_i^d accepted drafts, where a_i is the chance request i's
next draft holds once the ones before it did (n-gram drafts come in runs: a copied passage is accepted
whole, a stale one fails at once), and takes T(d) seconds. The policy picks the d in 0..k with the most
tokens per second. On a GPU a step of a few sequences streams the weights whatever its rows, so T(d) is
T(0) and any draft pays; once the rows make the step compute-bound, or each row reads more experts of a
mixture-of-experts model, only drafts likely to hold pay, and at a low enough acceptance none do.

A request's a_i follows it: after each checked step it moves halfway to the share of its drafts accepted
there, so a request copying a file drafts in full and one writing new prose stops. A request whose drafts
were held back still learns: its proposal's first token is compared with the token the step wrote, as
if it had been checked, so a request that stopped drafting starts again once the text it writes is again
the text its lookup finds. Before a request has any, a_i is the engine's overall acceptance (with ten
drafts' worth of an even prior, so one early failure does not stop every request).

With a draft model (engine/draft_model.py) drafts are not free: T(d) adds the draft's passes (one over
every drafting request, then one over those drafting a second token, and so on to d), priced by the
draft's own step-time model, and the length is chosen before the draft runs, so a step that checks none
writes none. A request that does not draft then learns nothing, so its estimate rises toward 1 by DRIFT a
step (optimism where nothing is known): a request whose drafts failed tries again once its estimate
reaches the acceptance at which a draft would pay (about 40 steps from 0.3 to 0.6), and stops again if
they still fail; and a request whose draft would pay is found even where the even prior says it does not."""

from __future__ import annotations

from dataclasses import dataclass

from engine.batch import StepShape
from engine.sequence import Sequence
from engine.speculation import SpeculationCounters
from engine.step_time import StepTimeModel

ADAPT = 0.5  # the weight of a checked step's acceptance in its request's estimate
PRIOR, PRIOR_DRAFTS = 0.5, 10  # the overall acceptance starts as 5 of 10 drafts accepted
DRIFT = 1 / 64  # a step without drafts moves a draft model's request this far toward 1


def expected_accepted(acceptance: float, drafts: int) -> float:
    """Drafts expected to be accepted of `drafts`, each holding with probability `acceptance` once the ones
    before it held."""
    if acceptance >= 1.0:
        return float(drafts)
    return acceptance * (1.0 - acceptance ** drafts) / (1.0 - acceptance)


@dataclass
class GoodputDraftLength:
    step_time: StepTimeModel
    counters: SpeculationCounters  # the engine's, for the overall acceptance
    draft_step_time: StepTimeModel | None = None  # a draft model's passes; None: drafts cost nothing to write

    def overall(self) -> float:
        c = self.counters
        return (c.accepted_tokens + PRIOR * PRIOR_DRAFTS) / (c.draft_tokens + PRIOR_DRAFTS)

    def acceptance(self, seq: Sequence) -> float:
        return self.overall() if seq.draft_acceptance is None else seq.draft_acceptance

    def observe(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """A checked step's outcome for `seq`."""
        seq.draft_acceptance = (1 - ADAPT) * self.acceptance(seq) + ADAPT * accepted / drafted

    def held_back(self, seq: Sequence, drafts: list[int]) -> None:
        """`seq` had `drafts` this step and checks none: its first is compared with the step's token."""
        seq.held_draft = drafts[0]

    def unobserved(self, seq: Sequence) -> None:
        """`seq` decoded without drafts, and no draft was written to compare: its estimate drifts up."""
        acceptance = self.acceptance(seq)
        seq.draft_acceptance = acceptance + DRIFT * (1.0 - acceptance)

    def shadow(self, seq: Sequence, token: int) -> None:
        """The token a step wrote for `seq`, whose drafts it held back."""
        self.observe(seq, 1, int(token == seq.held_draft))
        seq.held_draft = None

    def cap(self, proposals: list[tuple[Sequence, int]], others: StepShape, other_tokens: int) -> int:
        """The most drafts any request checks this step. `proposals`: each decoding request and how many
        drafts it has; `others`: the rest of the step (prefill chunks); `other_tokens`: tokens it samples."""
        longest = max((n for _, n in proposals), default=0)
        if not longest:
            return 0
        rows = [(seq.num_tokens, n, self.acceptance(seq)) for seq, n in proposals]
        decodes = len(rows)
        best, best_rate = 0, -1.0
        for d in range(longest + 1):
            drafts = kv = attention = 0
            tokens = float(other_tokens + decodes)
            for context, n, acceptance in rows:
                k = n if n < d else d
                drafts += k
                kv += context + k
                attention += k * (context + k)
                tokens += expected_accepted(acceptance, k)
            shape = StepShape(others.prefill_tokens, others.prefill_seqs, decodes, others.kv_tokens + kv,
                              others.prefill_attention + attention, drafts)
            seconds = self.step_time.predict(shape) + self._drafting_seconds(rows, d)
            rate = tokens / seconds
            if rate > best_rate * (1 + 1e-9):  # a longer draft must earn more than rounding
                best, best_rate = d, rate
        return best

    def _drafting_seconds(self, rows: list[tuple[int, int, float]], d: int) -> float:
        """A draft model's passes for drafts cut to `d`: pass j runs the requests drafting j or more."""
        if self.draft_step_time is None:
            return 0.0
        seconds = 0.0
        for j in range(1, d + 1):
            drafting = [context for context, n, _ in rows if min(n, d) >= j]
            if not drafting:
                break
            seconds += self.draft_step_time.predict(
                StepShape(0, 0, len(drafting), sum(drafting) + len(drafting) * (j - 1), 0))
        return seconds
