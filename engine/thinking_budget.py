"""A thinking budget for reasoning models (vLLM's `thinking_token_budget`, and `reasoning_effort` mapped to
one): once an answer has spent its budget inside its `<think>` block, the block's end tag is forced, token
by token, and the model answers from there, as vLLM's thinking-budget logits processor and SGLang's
`thinking_budget` do.

The block opens when the answer starts with the start tag (Qwen3 writes it) or the prompt already ends
with it (DeepSeek-R1's template opens it); the tokens counted are those inside the block, the tag not
included; a block the model closes itself ends the count. The runner masks a forced row's logits to the
forced token, so its sample (and its log-probabilities' choice) is that token; drafted rows see the state
their drafts would leave (engine/speculation.py), so checking drafts yields what single steps would."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from engine.batch import ScheduledBatch

# vLLM's defaults for `reasoning_effort` (its ReasoningConfig); "none" closes the block at once.
DEFAULT_EFFORT_BUDGETS = {"none": 0, "minimal": 256, "low": 1024, "medium": 2048, "high": 8192}


@dataclass(frozen=True)
class ThinkingTags:
    """The start and end tags as token ids (from the model's tokenizer)."""

    start: tuple[int, ...]
    end: tuple[int, ...]


@dataclass
class ThinkingBudget:
    """One answer's place in its thinking block: before it (`start`), inside, or past it (`done`)."""

    budget: int
    tags: ThinkingTags
    phase: str = "start"  # start -> inside -> done, or start -> done (no block)
    spent: int = 0  # tokens inside the block so far
    forcing: int = 0  # end-tag tokens already forced
    recent: list[int] = field(default_factory=list)  # the last tokens, to see a tag the model writes

    @classmethod
    def for_prompt(cls, budget: int, tags: ThinkingTags, prompt_token_ids: list[int]) -> ThinkingBudget:
        inside = len(prompt_token_ids) >= len(tags.start) and \
            tuple(prompt_token_ids[len(prompt_token_ids) - len(tags.start):]) == tags.start
        return cls(budget, tags, phase="inside" if inside else "start")

    def observe(self, token: int) -> None:
        """An output token, in order."""
        self.recent = [*self.recent, token][-max(len(self.tags.start), len(self.tags.end)):]
        if self.phase == "start":
            start = self.tags.start
            if tuple(self.recent[-len(start):]) == start:
                self.phase = "inside"
            elif len(self.recent) > len(start) or tuple(self.recent) != start[: len(self.recent)]:
                self.phase = "done"  # the answer did not open with a block
            return
        if self.phase != "inside":
            return
        if self.forcing:
            self.forcing += 1
        elif self.spent >= self.budget:
            self.forcing = 1  # this token is the first of the end tag, forced
        else:
            self.spent += 1
        if self.forcing == len(self.tags.end) or (not self.forcing and tuple(self.recent[-len(self.tags.end):])
                                                  == self.tags.end):
            self.phase = "done"

    def forced(self) -> int | None:
        """The token the next output must be, or None."""
        if self.phase != "inside" or (not self.forcing and self.spent < self.budget):
            return None
        return self.tags.end[self.forcing]

    def forced_after(self, drafts: list[int]) -> int | None:
        """The token forced after `drafts` are appended (for the row that follows them)."""
        if not drafts:
            return self.forced()
        state = ThinkingBudget(self.budget, self.tags, self.phase, self.spent, self.forcing, list(self.recent))
        for token in drafts:
            state.observe(token)
        return state.forced()


def forced_rows(batch: ScheduledBatch) -> list[int | None]:
    """The token each sampled row must be (engine/step_rows.py `sampled_rows` order), or None."""
    forced: list[int | None] = []
    for i in batch.sampling_indices:
        seq, drafts = batch.seqs[i], batch.draft_token_ids[i]
        state = seq.thinking
        forced += [None if state is None else state.forced_after(drafts[:j]) for j in range(len(drafts) + 1)]
    return forced


def force_thinking_ends(batch: ScheduledBatch, sampled: list[int]) -> list[int]:
    """`sampled` with each forced row's token in place (a runner that masks, as the torch runner does,
    already sampled it; a simulated one did not)."""
    if not any(batch.seqs[i].thinking is not None for i in batch.sampling_indices):
        return sampled
    return [token if forced is None else forced for token, forced in zip(sampled, forced_rows(batch), strict=True)]


def mask_to_forced(logits: torch.Tensor, forced: list[int | None]) -> None:
    """In place: each forced row keeps only its forced token."""
    for row, token in enumerate(forced):
        if token is not None:
            logits[row].fill_(float("-inf"))
            logits[row, token] = 0.0
