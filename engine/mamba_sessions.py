"""Agent sessions on a Mamba-2 hybrid: a finished turn's state kept with its session, so that the next turn
(the same conversation plus new messages) resumes from it instead of computing the whole prompt again.

A hybrid cannot rebuild a mixer state from cached KV blocks, so a prefix-cache hit is only usable where a
state snapshot holds exactly that prefix (vLLM keeps states at block boundaries for the same reason). While a
sequence of a session runs, the state pool (engine/mamba_state.py) copies its state at each block boundary it
passes into a session slot of its own; when the turn finishes, that slot is kept for the session with the
tokens it holds. The next turn's prompt matches the cached blocks its pin held; the block manager's
`prefix_limit` (`promise`) cuts the hit to the snapshot's blocks, where the snapshot's tokens begin the prompt
(else to nothing), and the pool copies the snapshot into the new turn's slot (`claim`). Snapshots live in
`num_session_slots` slots beside the running ones (sized in the KV budget with them); when none is free the
least recently kept one goes (a later turn of its session then computes its prompt whole)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.sequence import Sequence


@dataclass
class KeptState:
    slot: int
    prefix: tuple[int, ...]  # the tokens whose state the slot holds
    promised_to: str | None = None  # the request admitted to resume from it

    @property
    def num_tokens(self) -> int:
        return len(self.prefix)


class SessionStates:
    def __init__(self, slots: range) -> None:
        self._free = list(reversed(slots))
        self._kept: OrderedDict[str, KeptState] = OrderedDict()

    @property
    def kept(self) -> dict[str, KeptState]:
        return dict(self._kept)

    def take_slot(self) -> int | None:
        """A slot for a running session's boundary snapshots: a free one, else the oldest kept snapshot's that
        no admitted turn resumes from; None when there is none."""
        if not self._free:
            oldest = next((s for s, kept in self._kept.items() if kept.promised_to is None), None)
            if oldest is not None:
                self._free.append(self._kept.pop(oldest).slot)
        return self._free.pop() if self._free else None

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    def keep(self, session_id: str, slot: int, prefix: list[int]) -> None:
        """A finished turn's snapshot in `slot`, for the session's next turn (over an earlier one's, unless a
        turn admitted already resumes from that)."""
        old = self._kept.get(session_id)
        if old is not None and old.promised_to is not None:
            self.give_back(slot)
            return
        if old is not None:
            self.give_back(old.slot)
        self._kept[session_id] = KeptState(slot, tuple(prefix))
        self._kept.move_to_end(session_id)

    def promise(self, seq: Sequence, num_hits: int, block_size: int) -> int:
        """The blocks of `seq`'s `num_hits` cached ones it may resume over: its session snapshot's, where the
        snapshot's tokens begin its prompt and those blocks are all cached; 0 otherwise."""
        kept = self._kept.get(seq.session_id) if seq.session_id is not None else None
        if kept is None or kept.promised_to not in (None, seq.request_id) or kept.num_tokens % block_size:
            return 0
        blocks = kept.num_tokens // block_size
        if blocks > num_hits or tuple(seq.token_ids[: kept.num_tokens]) != kept.prefix:
            return 0
        kept.promised_to = seq.request_id
        return blocks

    def claim(self, seq: Sequence) -> KeptState | None:
        """The snapshot promised to `seq`, now taken out (its slot becomes the sequence's boundary slot)."""
        kept = self._kept.get(seq.session_id) if seq.session_id is not None else None
        if kept is None or kept.promised_to != seq.request_id or kept.num_tokens != seq.num_computed_tokens:
            return None
        del self._kept[seq.session_id]  # type: ignore[arg-type]
        return kept
