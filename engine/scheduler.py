"""Continuous batching with a token budget per step, chunked prefill and preemption by recompute.

Every step, running requests go first (each decode takes one token, an unfinished prefill takes a
chunk), then waiting requests join in policy order while tokens, sequence slots and KV blocks last.
When a running request cannot get a block, pins give way first (inside the block manager), then the
running request with the largest policy key is preempted: its blocks are freed (their cached
prefix stays reusable, and with a host or disk tier is copied there before its blocks are reused) and it
waits again to be recomputed: a waiting request takes its prefix from the GPU's cached blocks, then from
the host or disk tier, and computes the rest (one whose disk blocks are being read ahead lets the others go
first: engine/disk_cache.py). With a drafter (speculative decoding), a
decoding request also takes draft tokens to check, while the budget and free blocks allow (cut, with a
goodput policy, to the length that pays: engine/draft_length.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from engine.batch import ScheduledBatch, StepShape
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.image_inputs import whole_images_chunk
from engine.policy import SchedulingPolicy
from engine.sequence import Sequence, SequenceStatus
from engine.waiting_queue import WaitingQueue

if TYPE_CHECKING:
    from engine.draft_length import GoodputDraftLength


class Drafter(Protocol):
    def propose(self, requests: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Draft tokens to follow each (decoding request, the most it may take)'s last token, in order:
        n-gram lookups (engine/speculation.py) or a draft model's, all requests in one batch
        (engine/draft_model.py)."""
        ...

    def forget(self, seq: Sequence) -> None:
        """`seq` stopped running (finished, aborted or preempted): whatever the drafter holds for it goes."""
        ...


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, policy: SchedulingPolicy,
                 drafter: Drafter | None = None, draft_length: GoodputDraftLength | None = None) -> None:
        self.config = config
        self.block_manager = block_manager
        self.policy = policy
        self.drafter = drafter
        self.draft_length = draft_length  # cuts each step's drafts to what pays (None: drafts in full)
        self.waiting = WaitingQueue(policy)
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.preempted_last_step = False

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        assert seq.status is SequenceStatus.WAITING
        self.waiting.push(seq)

    def abort(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq.request_id)
        elif seq.status is SequenceStatus.RUNNING:
            self._stop_running(seq)
        seq.status = SequenceStatus.FINISHED

    def _room(self, seq: Sequence, budget: int) -> int:
        """The drafts a decoding request may take: within the step's budget and what it may still generate."""
        return min(budget - 1, seq.params.max_tokens - seq.num_output_tokens - 1,
                   self.config.max_model_len - seq.num_tokens - 1)

    def _drafts(self, decodes: list[Sequence], budget: int, cap: int | None = None) -> list[list[int]]:
        """Each decoding request's drafts (none for a first token), at most `cap` each; for an answer held
        to a grammar, only as many as it allows."""
        asked = [(seq, room) for seq in decodes
                 if seq.num_output_tokens > 0 and (room := min(self._room(seq, budget), budget if cap is None else cap)) > 0]
        proposed = iter(self.drafter.propose(asked) if asked and self.drafter is not None else [])
        drafts = {seq.request_id: next(proposed) for seq, _ in asked}
        out = []
        for seq in decodes:
            got = drafts.get(seq.request_id, [])
            if got and seq.grammar is not None:
                got = got[: seq.grammar.valid_prefix(got)]
            out.append(got)
        return out

    def _planned_drafts(self, budget: int) -> dict[str, list[int]]:
        """Each decoding request's drafts for this step, cut to the length that pays where a
        `draft_length` policy prices them against the step they join."""
        decoding: list[Sequence] = []
        others = StepShape(0, 0, 0, 0, 0)
        sampled = 0  # tokens the step's prefill chunks sample (those that end their prompt)
        for seq in self.running:
            remaining = len(seq.token_ids) - seq.num_computed_tokens
            if remaining == 1:
                decoding.append(seq)
            elif self.draft_length is not None:
                chunk = min(remaining, self.config.long_prefill_token_threshold)
                context = seq.num_computed_tokens + chunk
                others = StepShape(others.prefill_tokens + chunk, others.prefill_seqs + 1, 0,
                                   others.kv_tokens + context, others.prefill_attention + chunk * context)
                sampled += chunk == remaining
        if self.draft_length is not None and self.draft_length.draft_step_time is not None:
            return self._priced_drafts(decoding, budget, others, sampled)
        decodes = list(zip(decoding, self._drafts(decoding, budget), strict=True))
        if self.draft_length is not None and any(drafts for _, drafts in decodes):
            cap = self.draft_length.cap([(seq, len(drafts)) for seq, drafts in decodes], others, sampled)
            for seq, drafts in decodes:
                if drafts and not cap:
                    self.draft_length.held_back(seq, drafts)
            decodes = [(seq, drafts[:cap]) for seq, drafts in decodes]
        return {seq.request_id: drafts for seq, drafts in decodes if drafts}

    def _priced_drafts(self, decoding: list[Sequence], budget: int, others: StepShape, sampled: int
                       ) -> dict[str, list[int]]:
        """A draft model's drafts, whose passes cost: their length chosen before they are written."""
        assert self.draft_length is not None and self.config.speculative is not None
        k = self.config.speculative.num_speculative_tokens
        wanted = [(seq, max(0, min(k, self._room(seq, budget))) if seq.num_output_tokens else 0) for seq in decoding]
        cap = self.draft_length.cap(wanted, others, sampled)
        planned = {}
        for seq, drafts in zip(decoding, self._drafts(decoding, budget, cap) if cap else [[]] * len(decoding),
                               strict=True):
            if drafts:
                planned[seq.request_id] = drafts
            else:
                self.draft_length.unobserved(seq)
        return planned

    def _chunk(self, seq: Sequence, budget: int) -> int:
        remaining = len(seq.token_ids) - seq.num_computed_tokens
        if remaining == 1:
            return 1
        return self._whole_images(seq, seq.num_computed_tokens, min(remaining, budget,
                                                                    self.config.long_prefill_token_threshold))

    @staticmethod
    def _whole_images(seq: Sequence, start: int, num_new: int) -> int:
        """A prefill chunk cut before a bidirectional image (Gemma 3's) it would end inside: such an image's
        tokens are computed in one chunk, the next step's when this one has not the room (0: none this step)."""
        return whole_images_chunk(seq.images, start, num_new) if seq.images else num_new

    def schedule(self, now: float) -> ScheduledBatch:
        self.block_manager.expire_pins(now)
        batch = ScheduledBatch(block_size=self.config.block_size, attention_window=self.config.attention_window,
                               hybrid_attention=self.config.hybrid_attention)
        budget = self.config.max_num_batched_tokens
        scheduled: set[str] = set()
        preempted = False
        i = 0
        planned = self._planned_drafts(budget) if self.drafter is not None else {}
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = self._chunk(seq, budget)
            if num_new == 0:  # its next image does not fit in what is left of the budget
                i += 1
                continue
            drafts = planned.get(seq.request_id, [])[: budget - 1] if num_new == 1 else []
            # Drafts take only free blocks: speculation neither evicts a pin nor preempts anyone.
            if drafts and self.block_manager.allocate_slots(seq, 1, reclaim_pins=False,
                                                            num_lookahead_tokens=len(drafts)):
                batch.add(seq, 1 + len(drafts), drafts)
                scheduled.add(seq.request_id)
                budget -= 1 + len(drafts)
                i += 1
                continue
            while not self.block_manager.allocate_slots(seq, num_new):
                victim = self._pick_victim(exclude=scheduled)
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                batch.add(seq, num_new)
                scheduled.add(seq.request_id)
                budget -= num_new
                i += 1
        # Admit new work only when nothing had to be preempted: memory is tight otherwise.
        reading: list[Sequence] = []  # waiting for their disk blocks to be read ahead: the rest go first
        while not preempted and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting.peek()
            if seq is None:
                break
            leader = seq.prompt_leader
            # A sample waits for its prompt's blocks while another sample is computing them (running
            # requests go first, so it will), in policy order, rather than compute them twice. Not for
            # a leader that is waiting itself (preempted): that one could be behind it.
            if leader is not None and leader.status is SequenceStatus.RUNNING \
                    and leader.num_computed_tokens < leader.num_prompt_tokens:
                break
            # A prompt to score (echo) is computed whole: cached blocks would skip its logits.
            cached = [] if seq.needs_prompt_logits else self.block_manager.match_prefix(seq)
            loaded = [] if seq.needs_prompt_logits else self.block_manager.match_tiers(seq, len(cached))
            if loaded and not self.block_manager.tiers.ready(loaded):
                reading.append(self.waiting.pop())
                continue
            start = (len(cached) + len(loaded)) * self.config.block_size
            num_new = self._whole_images(seq, start, min(seq.num_tokens - start, budget,
                                                         self.config.long_prefill_token_threshold))
            if num_new == 0:
                break
            reclaim = not (self.config.pins_hold_admission and self.running)
            if self.config.admit_whole_prompt and self.running and not self._prompt_fits(seq, cached, reclaim):
                break
            if not self.block_manager.allocate_slots(seq, num_new, cached, reclaim_pins=reclaim, loaded=loaded):
                break
            self.waiting.pop()
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:  # a recompute after preemption keeps the first figures
                seq.first_scheduled_time = now
                seq.num_cached_tokens = seq.num_computed_tokens
            self.running.append(seq)
            batch.add(seq, num_new)
            budget -= num_new
        for seq in reading:
            self.waiting.push(seq)
        self.preempted_last_step = preempted
        return batch

    def _prompt_fits(self, seq: Sequence, cached: list[int], reclaim_pins: bool) -> bool:
        bm = self.block_manager
        needed = bm.blocks_to_start(seq, cached, self.config.long_prefill_token_threshold)
        available = bm.num_free_blocks
        if needed > available and reclaim_pins:
            available += bm.num_reclaimable_pinned_blocks()
        return needed <= available

    def _pick_victim(self, exclude: set[str]) -> Sequence:
        # `exclude` never covers everyone: the request asking for blocks is not scheduled yet.
        return max((s for s in self.running if s.request_id not in exclude), key=self.policy.sort_key)

    def _stop_running(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        if self.drafter is not None:
            self.drafter.forget(seq)

    def _preempt(self, seq: Sequence) -> None:
        self._stop_running(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push(seq)

    def finish(self, seq: Sequence) -> None:
        self._stop_running(seq)
        seq.status = SequenceStatus.FINISHED
