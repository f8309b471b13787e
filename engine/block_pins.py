"""TTL pins on KV blocks, the pin half of the block manager (engine/block_manager.py, its base class).

Pins hold block references until their deadline. A pin budget caps them: a new pin that does not fit
pushes out other pins, earliest deadline first. When memory is short, pins give way (earliest deadline
first) before the scheduler has to preempt a running request. A released pin's blocks go to the back of
the free queue: still cached, evicted last."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.group_tiers import group_block_key
from engine.pins import PinTable
from engine.sequence import NULL_BLOCK

if TYPE_CHECKING:
    from engine.kv_tiers import KVTiers


class BlockPins:
    """Needs the block manager's pins, pin budget, free-block count and block references."""

    pins: PinTable
    pin_budget_blocks: int
    block_size: int
    blocks: list
    tiers: KVTiers
    # A pin that gave way while a host tier sits behind the cache: its deadline and its blocks' tier keys. Its
    # blocks spill to host memory as the GPU reuses them; once the deadline passes, the host slots go first.
    spilled_pins: dict[str, tuple[float, list[int]]]

    if TYPE_CHECKING:
        @property
        def num_free_blocks(self) -> int: ...

        def _take(self, block_id: int) -> None: ...

        def _release(self, block_id: int) -> None: ...

    def _reclaim(self, needed: int) -> bool:
        """Free blocks by releasing pins, earliest deadline first, until `needed` are free."""
        while self.num_free_blocks < needed:
            pin = self.pins.earliest()
            if pin is None:
                return False
            self._drop_pin(pin.key, evicted=True)
        return True

    def pin(self, key: str, block_ids: list[int], ttl_s: float, now: float, num_tokens: int | None = None) -> int:
        """Hold `block_ids` for `key` until now + ttl_s (re-pinning replaces and refreshes).
        Other pins give way, earliest deadline first, to keep the pin budget; a pin larger than the
        whole budget keeps its leading blocks. `num_tokens`: the prefix the blocks hold (default: one block
        each, as with one KV group). Returns the number of blocks pinned."""
        assert ttl_s >= 0
        block_ids = list(dict.fromkeys(b for b in block_ids if b != NULL_BLOCK))[: self.pin_budget_blocks]
        if num_tokens is None:
            num_tokens = len(block_ids) * self.block_size
        if ttl_s == 0 or not block_ids:
            self.unpin(key)
            return 0
        for b in block_ids:
            self._take(b)
        if key in self.pins:
            self._drop_pin(key, refreshed=True)
        self.spilled_pins.pop(key, None)  # pinned again: the new pin's deadline holds
        new_blocks = sum(1 for b in block_ids if b not in self.pins.holders)
        while self.pins.num_pinned_blocks + new_blocks > self.pin_budget_blocks:
            victim = self.pins.earliest()
            assert victim is not None
            self._drop_pin(victim.key, evicted=True)
            new_blocks = sum(1 for b in block_ids if b not in self.pins.holders)
        self.pins.add(key, block_ids, now + ttl_s, num_tokens)
        self.pins.counters.set += 1
        return len(block_ids)

    def extend_pin(self, key: str, ttl_s: float, now: float) -> bool:
        if key not in self.pins:
            return False
        self.pins.extend(key, now + ttl_s)
        self.pins.counters.refreshed += 1
        return True

    def unpin(self, key: str) -> bool:
        if key not in self.pins:
            return False
        self._drop_pin(key)
        self.pins.counters.unpinned += 1
        return True

    def num_reclaimable_pinned_blocks(self) -> int:
        """Blocks that dropping every pin would free: held by pins and by nothing else."""
        return sum(1 for b, holders in self.pins.holders.items() if self.blocks[b].ref_count == holders)

    def expire_pins(self, now: float) -> int:
        keys = self.pins.expired_keys(now)
        for key in keys:
            self._drop_pin(key)
        host = self.tiers.host
        for key in [k for k, (deadline, _) in self.spilled_pins.items() if deadline <= now]:
            for tier_key in self.spilled_pins.pop(key)[1]:
                if host is not None:
                    host.release(tier_key)
        self.pins.counters.expired += len(keys)
        return len(keys)

    def _drop_pin(self, key: str, evicted: bool = False, refreshed: bool = False) -> None:
        pin = self.pins.remove(key)
        if evicted and self.tiers.host is not None:  # it spills to the host tier: its TTL still frees that
            self.spilled_pins[key] = (pin.deadline, [group_block_key(block.hash, block.group) for b in pin.block_ids
                                                     if (block := self.blocks[b]).hash is not None])
        # Released pinned blocks go to the back of the free queue: still cached, evicted last.
        for block_id in pin.block_ids:
            self._release(block_id)
        if evicted:
            self.pins.counters.evicted += 1
        if refreshed:
            self.pins.counters.refreshed += 1
