"""The host tier of the KV cache: KV blocks the GPU evicts are copied to host memory, so a later
prompt with that prefix loads them back over the host link instead of computing them again (vLLM's
KV offloading, SGLang's hierarchical cache).

A block is saved when the block manager reuses it for something else (write-back on eviction: only
blocks that are about to be lost cross the link), keyed by the same chain hash as the GPU prefix
cache and checked against its token ids on a hit. Host slots are reused least recently used first;
with a disk tier behind it (engine/disk_cache.py), the block a reused slot held is written there.

The table only decides (engine/kv_slots.py); copies are queued as `KVTransfer`s that the runner
performs at the start of the step that follows, in order, before the forward pass writes into any
block. A slot a queued copy reads or writes is busy until then, so no later decision of the same step
overwrites it."""

from __future__ import annotations

from engine.kv_slots import KVSlotTable, TierStats
from engine.kv_transfer import HOST, Tier

HostCacheStats = TierStats


class HostKVCache(KVSlotTable):
    tier: Tier = HOST
