"""The shared deployment-limits benchmark end to end at its smoke size (`--quick`): two replicas, one mock
provider with a quota, per-replica windows against windows shared through Redis; its JSON has its fields,
and sharing keeps the provider's 429s below what the replicas alone draw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gateway_deployment_limits_shared as bench
from tests.gateway.test_limits import REDIS_URL, needs_redis


@needs_redis
@pytest.mark.timeout(300)
def test_shared_deployment_limits_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "shared.json"
    bench.main(["--quick", "--redis-url", REDIS_URL, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["settings"]["quota_rpm"] == 10 and report["settings"]["replicas"] == 2
    local, shared = report["runs"]
    assert (local["variant"], shared["variant"], shared["sync_interval_s"]) == ("local", "shared", 0.25)
    for run in (local, shared):
        assert run["sent"] == local["sent"] > 10  # the same schedule, past the quota
        assert run["answered"] + run["refused_by_gateway"] + sum(run["other_errors"].values()) == run["sent"]
        assert run["provider_served"] <= 10 and run["latency_ms"]["p50"] > 0
    # alone, each replica sends up to the whole quota: the provider refuses what passes it
    assert local["provider_429s"] > 0 and local["syncs"] == {"ok": 0, "failed": 0}
    # shared: the replicas together stop at the quota, give or take what one starts before the other reads it
    assert shared["provider_429s"] < local["provider_429s"] and shared["syncs"]["ok"] > 0
    assert shared["syncs"]["failed"] == 0 and shared["refused_by_gateway"] > 0
