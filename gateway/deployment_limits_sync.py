"""Per-deployment rate windows (gateway/deployment_limits.py) shared by gateway replicas through Redis
(`redis_url`), as litellm's router shares its rpm / tpm counts: each replica counts in process and a
background task syncs with Redis every `deployment_limits.sync_interval_s` (0.25 s): one pipelined round
trip for all the deployments, writing this replica's counts of each wall-clock second of the window and
reading back the other replicas'. A pick checks this replica's window plus the others' as of the last
sync, so the request path never waits for Redis.

Staleness: a request another replica starts is seen here once its next sync has written it and this
replica's next sync has read it, at most two intervals (and two round trips) later. So the replicas
together may pass a quota by what the others start in that time: at most what the other replicas start
in two sync intervals. Other replicas' seconds count until the end of their second is 60 s old, up to a
second longer than their requests (never early). Replicas' clocks are taken to agree to well under a
second (NTP).

Redis away or slow (a sync failing, or past its timeout): logged once, counted in
`pitstop_deployment_limit_syncs_total{outcome="failed"}`, `pitstop_deployment_limits_shared` 0, and each
replica forgets the others' counts and holds to its own window alone (per replica, as without Redis:
fail open) until a sync answers again; that sync writes the whole window, what was counted during the
outage included. Requests never wait for, nor fail because of, Redis.

Why whole windows and not increments (litellm pushes increments): a sync retried after a timeout, or one
Redis applied before the reply was lost, counts once, and a Redis that restarted empty is refilled by one
sync of each replica instead of under-counting for a minute (storage/redis_deployment_windows.py).

Measured (`python -m bench.gateway_deployment_limits_shared --rate 20 --quota-rpm 200 --duration 20
--sync-interval 0.25 1`, README): two replicas at 10 requests a second each against a 200/min quota sent
the provider 200 past it with their own windows, 2 shared at a 0.25 s sync and 11 at 1 s (bounds: 5, 20)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.deployment_limits import DeploymentWindow
from storage.redis_deployment_windows import RedisDeploymentWindows, WindowSync
from storage.redis_state import StateUnavailableError

if TYPE_CHECKING:
    from gateway.deployments import DeploymentPool

log = logging.getLogger("pitstop.gateway")
OUTAGE_RETRY_S = 1.0  # while Redis is away, a sync is tried this often at most


class DeploymentLimitSync:
    def __init__(self, store: RedisDeploymentWindows, pool: DeploymentPool, interval_s: float = 0.25,
                 timeout_s: float = 2.0, on_sync: Callable[[bool], None] | None = None) -> None:
        assert interval_s > 0
        self.store, self.pool = store, pool
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.on_sync = on_sync  # the gateway's metrics: each sync, whether Redis answered
        self.shared = False  # whether the last sync answered: the windows hold the others' counts
        self.syncs = 0  # syncs that answered, for tests waiting for one
        self._task: asyncio.Task[None] | None = None
        self._degraded = False

    @classmethod
    def from_url(cls, url: str, prefix: str, pool: DeploymentPool, interval_s: float,
                 on_sync: Callable[[bool], None] | None = None) -> DeploymentLimitSync:
        return cls(RedisDeploymentWindows.from_url(url, prefix, uuid.uuid4().hex), pool, interval_s,
                   on_sync=on_sync)

    def windows(self) -> list[DeploymentWindow]:
        """The synced windows, those of wildcard models adopted since the last sync included."""
        return [d.window for d in self.pool.deployments if d.window is not None and d.window.synced]

    async def sync_once(self) -> bool:
        """Write this replica's counts and read the others' (True), or fall back to the local windows (False)."""
        windows = self.windows()
        if not windows:
            return True
        batch = []
        for window in windows:
            oldest = window.oldest_second()
            batch.append(WindowSync(window.shared_id, oldest, window.seconds(oldest)))
        ttl_s = 2 * max(window.window_s for window in windows)
        try:
            # The store's socket timeouts end a hung Redis; this bounds the whole exchange too.
            replies = await asyncio.wait_for(self.store.sync(batch, ttl_s), self.timeout_s)
        except (StateUnavailableError, TimeoutError) as exc:
            for window in windows:
                window.forget_others()
            self._failed(exc)
            return False
        for window, others in zip(windows, replies, strict=True):
            window.merge_others(others)
        self._answered()
        return True

    def _failed(self, exc: Exception) -> None:
        if not self._degraded:
            log.error("deployment rate limits: Redis unavailable (%s); each replica keeps its own windows "
                      "until it answers", exc or type(exc).__name__)
        self._degraded, self.shared = True, False
        if self.on_sync is not None:
            self.on_sync(False)

    def _answered(self) -> None:
        if self._degraded:
            log.warning("deployment rate limits: Redis answers again; the replicas' windows are shared")
        self._degraded, self.shared = False, True
        self.syncs += 1
        if self.on_sync is not None:
            self.on_sync(True)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sync_once()
            except Exception:  # a bug here must not end the sync for the process's life
                log.exception("deployment rate limits: sync failed")
            wait = max(self.interval_s, OUTAGE_RETRY_S) if self._degraded else self.interval_s
            await asyncio.sleep(max(wait - (time.monotonic() - started), 0.0))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deployment-limit-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.close()
