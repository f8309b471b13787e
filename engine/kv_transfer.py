"""The block copies between the GPU's KV cache and the slower tiers behind it: host memory
(engine/host_cache.py) and disk (engine/disk_cache.py). The block manager plans them as it schedules a
step; the runner performs them in order at the start of that step, before its forward pass writes into
any block, on every tensor-parallel rank alike (the simulated runner prices them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

# Where a copy goes: GPU block <-> host slot, GPU block <-> disk slot, or host slot -> disk slot (a block
# the host tier evicts is written behind it).
Tier = Literal["host", "disk", "host_to_disk"]
HOST: Tier = "host"
DISK: Tier = "disk"
HOST_TO_DISK: Tier = "host_to_disk"


@dataclass(frozen=True)
class KVTransfer:
    """One block copy. `save`: away from the GPU, into `slot` of the tier; else a load from `slot` into
    GPU block `block_id`. For HOST_TO_DISK (always a save), `block_id` is the host slot it reads. A save
    carries the block's chain hash: the disk file records it beside the slot once the write is done. A disk
    load `ahead`: its slot was read into memory before the step (engine/disk_cache.py), so the step does not
    wait for the drive."""

    save: bool
    block_id: int
    slot: int
    tier: Tier = HOST
    block_hash: int = 0
    ahead: bool = False


class TierSlot(NamedTuple):
    """A prefix block found in a slower tier: a load will read `slot` of `tier` ("host" or "disk")."""

    tier: Tier
    slot: int
