"""Agent sessions on one engine instance: where each session's last turn left its KV (block hashes),
and the pin API over it: pin what is still cached, extend, release, report. LLMEngine takes these
methods; they run on its thread, as every other engine call does."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engine.block_manager import BlockManager
from engine.clock import Clock
from engine.config import EngineConfig
from engine.sampling_params import InvalidRequestError
from engine.sequence import Sequence

MAX_REMEMBERED_SESSIONS = 100_000


@dataclass
class SessionKV:
    """Where a session's last finished turn left its KV: block hashes, so it can be pinned later."""

    block_hashes: list[int]
    num_tokens: int
    last_finish_time: float
    turns: int = 0


class SessionPins:
    """The session half of LLMEngine (its base class): needs its config, clock and block manager."""

    config: EngineConfig
    clock: Clock
    block_manager: BlockManager
    sessions: OrderedDict[str, SessionKV]

    def _remember_session(self, seq: Sequence, now: float) -> None:
        """A session's turn finished: remember its KV, and pin it when the turn asked (before its blocks
        are freed, so nothing can take them in between)."""
        assert seq.session_id is not None
        hashes = seq.block_hashes[: seq.num_registered_blocks]
        previous = self.sessions.pop(seq.session_id, None)
        self.sessions[seq.session_id] = SessionKV(hashes, seq.num_tokens, now, (previous.turns if previous else 0) + 1)
        if len(self.sessions) > MAX_REMEMBERED_SESSIONS:
            self.sessions.popitem(last=False)
        if seq.pin_ttl_s:
            self._pin(seq.session_id, hashes, seq.pin_ttl_s, now)

    def _pin(self, session_id: str, block_hashes: list[int], ttl_s: float, now: float) -> int:
        block_ids, prefix_blocks = self.block_manager.pinnable_prefix(block_hashes)
        return self.block_manager.pin(session_id, block_ids, ttl_s, now, prefix_blocks * self.config.block_size)

    def _hold_pin_for_arrival(self, session_id: str, now: float) -> None:
        pin = self.block_manager.pins.pins.get(session_id)
        hold = self.config.arrival_pin_hold_s
        if pin is not None and hold > 0 and pin.deadline < now + hold:
            self.block_manager.extend_pin(session_id, hold, now)

    def expire_pins(self) -> int:
        return self.block_manager.expire_pins(self.clock.now())

    def next_pin_deadline(self) -> float | None:
        pin = self.block_manager.pins.earliest()
        return pin.deadline if pin else None

    def pin_session(self, session_id: str, ttl_s: float) -> int:
        """Pin what is still cached of the session's last turn; returns the blocks pinned."""
        if ttl_s < 0:
            raise InvalidRequestError("ttl_s must be >= 0", "ttl_s")
        kv = self.sessions.get(session_id)
        if kv is None:
            raise KeyError(session_id)
        return self._pin(session_id, kv.block_hashes, ttl_s, self.clock.now())

    def extend_session_pin(self, session_id: str, ttl_s: float) -> bool:
        if ttl_s < 0:
            raise InvalidRequestError("ttl_s must be >= 0", "ttl_s")
        return self.block_manager.extend_pin(session_id, ttl_s, self.clock.now())

    def unpin_session(self, session_id: str) -> bool:
        return self.block_manager.unpin(session_id)

    def session_info(self, session_id: str) -> dict | None:
        """The session's turns and tokens; `cached_tokens` of its last turn still on the GPU, and
        `host_cached_tokens` and `disk_cached_tokens` more that the host and disk tiers hold right after them
        (a next turn loads them all)."""
        kv = self.sessions.get(session_id)
        if kv is None:
            return None
        pin = self.block_manager.pins.pins.get(session_id)
        on_gpu = self.block_manager.num_cached_prefix_blocks(kv.block_hashes)
        host, disk = self.block_manager.host, self.block_manager.disk
        in_host = on_disk = 0
        for block_hash in kv.block_hashes[on_gpu:]:  # what a next turn would load, block by block
            if host is not None and block_hash in host:
                in_host += 1
            elif disk is not None and block_hash in disk:
                on_disk += 1
            else:
                break
        bs = self.config.block_size
        return {
            "session_id": session_id, "turns": kv.turns, "num_tokens": kv.num_tokens,
            "cached_tokens": on_gpu * bs, "host_cached_tokens": in_host * bs, "disk_cached_tokens": on_disk * bs,
            "pinned_blocks": len(pin.block_ids) if pin else 0, "pinned_tokens": pin.num_tokens if pin else 0,
            "pin_ttl_remaining_s": max(0.0, pin.deadline - self.clock.now()) if pin else 0.0,
        }
