"""The host and disk KV tiers under KV groups (engine/kv_groups.py): a tier slot holds one group's block (the
`group_size` layers of one kind that a pool block holds), keyed by the prefix's chain hash and the group, so a
spilled prefix costs its full groups' blocks and only the last window of its sliding groups' (vLLM's KV
offloading for hybrid models).

Which sliding-group blocks a tier is given: the block manager saves a sliding group's block when it is evicted
unless it was released because it slid out of the window of the request that held it (engine/block_manager.py),
so what spills of a finished turn or a pin is its window. A prefix is taken from the tiers as the GPU cache
takes one (engine/prefix_match.py): every full group's block of it, a sliding group's in its last window."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from engine.kv_transfer import TierSlot

if TYPE_CHECKING:
    from engine.prefix_match import PrefixMatch
    from engine.sequence import Sequence


class GroupSlots(NamedTuple):
    """One prefix block found in the tiers with KV groups: each group's slot, None for a sliding group's
    block before the prefix's last window (not loaded: its table entry stays NULL_BLOCK)."""

    slots: tuple[TierSlot | None, ...]


TierHit = TierSlot | GroupSlots


def group_block_key(block_hash: int, group: int) -> int:
    """What a tier knows group `group`'s block of prefix `block_hash` by: the first group's by the hash itself
    (one group: as without KV groups), the others' by a hash of it and the group (ints only: stable across
    processes, as the disk tier needs)."""
    return block_hash if group == 0 else hash((block_hash, -1, group))


def tier_slots(hits: list[TierHit]) -> list[TierSlot]:
    """Every slot a list of tier hits reads."""
    slots: list[TierSlot] = []
    for hit in hits:
        if isinstance(hit, GroupSlots):
            slots += [slot for slot in hit.slots if slot is not None]
        else:
            slots.append(hit)
    return slots


def match_group_tiers(bm: PrefixMatch, seq: Sequence, start: int, end: int) -> list[TierHit]:
    """The tiers' slots for blocks `start`..`end - 1` of `seq` after its `start` GPU hits (whose last window
    every sliding group holds on the GPU): the longest run that every full group has whole and every sliding
    group has over the window of its end. Looked-up slots stay busy until the step's copies are taken."""
    bs, tiers = bm.block_size, bm.tiers

    def lookup(group: int, i: int) -> TierSlot | None:
        found = tiers.match([group_block_key(seq.block_hashes[i], group)],
                            lambda _: tuple(seq.token_ids[i * bs : (i + 1) * bs]), 0, 1)
        return found[0] if found else None

    full = [g for g, slides in enumerate(bm.group_slides) if not slides]
    found: dict[int, list[TierSlot | None]] = {g: [] for g in range(len(bm.group_slides))}
    length = start
    while length < end:
        slots = [lookup(g, length) for g in full]
        if None in slots:
            break
        for g, slot in zip(full, slots, strict=True):
            found[g].append(slot)
        length += 1
    sliding = [g for g, slides in enumerate(bm.group_slides) if slides]
    for g in sliding:
        found[g] = [lookup(g, i) for i in range(start, length)]
    best = start  # the longest run whose end's window every sliding group has (GPU hits before `start`)
    run_start = bm.first_needed_block(start * bs) if start else 0  # the GPU hits hold the window at `start`
    for i in range(start, length):
        if any(found[g][i - start] is None for g in sliding):
            run_start = i + 1
        elif run_start <= bm.first_needed_block((i + 1) * bs):
            best = i + 1
    first = bm.first_needed_block(best * bs)
    return [GroupSlots(tuple(found[g][i - start] if g in full or i >= first else None
                             for g in range(len(bm.group_slides))))
            for i in range(start, best)]
