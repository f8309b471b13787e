"""The gateway-overhead benchmark runs end to end at a tiny size: mock upstream, load generator, direct
baseline, Pitstop (outcome log in a temp SQLite file) and Pitstop routing through a trained router (a
small one trained here), one low rate, both modes; its JSON has its fields. The LiteLLM proxy and the
rate search are left to `make bench-gateway`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

if importlib.util.find_spec("gateway.app") is None:
    pytest.skip("gateway/app.py does not exist yet: nothing to benchmark", allow_module_level=True)
pytest.importorskip("aiohttp")

from bench import gateway_overhead  # noqa: E402

LATENCY_FIELDS = {"p50", "p99"}
BENCH_MODELS = {"big": "gpt-4-1106-preview", "solver": "mistralai/mistral-7b-chat"}


def _small_router(path: Path) -> str:
    """A pitstop-family router over the two model names the benchmark's deployments stand for."""
    from routers.artifact import save_router
    from routers.data.table import long_table, to_wide
    from routers.families import build_router
    from routers.features.featurizer import FeatureSpec
    from tests.routers.conftest import random_encoder, synthetic_rows

    rows = [{**r, "model": BENCH_MODELS[r["model"]]} for r in synthetic_rows() if r["model"] in BENCH_MODELS]
    data = to_wide(long_table(rows), name="synthetic")
    router = build_router("pitstop", data.models, FeatureSpec("static", ("head", "focus"), True, 10),
                          random_encoder())
    return save_router(router.fit(data), path, {"dataset": "synthetic"})["version"]


@pytest.mark.timeout(240)
def test_gateway_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gateway_overhead.json"
    artifact = tmp_path / "router.joblib"
    version = _small_router(artifact)
    rc = gateway_overhead.main([
        "--systems", "pitstop,pitstop-routed", "--router-artifact", str(artifact), "--routed-prompt", "--rates", "10", "--duration", "1.2", "--warmup", "0.2", "--no-search",
        "--storage", "sqlite", "--quiet-wait", "0", "--system-warmup", "0.2", "--out", str(out),
        # Pitstop's own HTTP backend: starts in ~3 s where the litellm one spends ~13 s importing litellm;
        # the harness is what is under test here.
        "--pitstop-model", "pitstop-engine/mock"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gateway_overhead"
    assert {"platform", "cpu_model", "cores"} <= report["machine"].keys()
    assert report["versions"]["litellm"] and report["versions"]["pitstop"]
    assert report["config"]["rates"] == [10.0] and report["config"]["pitstop_model"] == "pitstop-engine/mock" and report["method"]["added_latency"]

    pitstop = report["systems"]["pitstop"]
    assert pitstop["outcome_logging"] is True and pitstop["rss_mib"]["idle_after_start"] > 0
    assert pitstop["rss_mib"]["after"] > 0
    assert pitstop["rows_logged"]["outcomes"] >= pitstop["requests_sent"] * 0.9  # logging really happened
    assert [(p["mode"], p["target_rps"]) for p in pitstop["points"]] == [("non_stream", 10.0), ("stream", 10.0)]
    for point in pitstop["points"]:
        gateway, direct = point["gateway"], point["direct"]
        assert gateway["errors"] == 0 and direct["errors"] == 0 and gateway["ok"] > 0
        assert gateway["achieved_rps"] > 0 and gateway["latency_ms"].keys() >= LATENCY_FIELDS
        assert gateway["latency_ms"]["p50"] > 0 and direct["latency_ms"]["p50"] > 0
        assert point["added_latency_ms"].keys() == LATENCY_FIELDS
        assert isinstance(point["sustained"], bool) and point["cpu"]["gateway_ms_per_request"] > 0
    stream = pitstop["points"][1]
    assert stream["ttft_added_ms"]["p50"] is not None and stream["gateway"]["ttft_ms"]["p50"] > 0
    assert report["table"] and report["goal"]["evaluated"] is False  # no LiteLLM here

    routed = report["systems"]["pitstop-routed"]
    assert routed["router"]["version"] == version
    assert routed["rows_logged"]["outcomes"] >= routed["requests_sent"] * 0.9
    assert all(p["gateway"]["errors"] == 0 for p in routed["points"])
    overhead = report["routing_overhead"]
    assert overhead["evaluated"] is True and overhead["router"]["version"] == version
    assert [(p["mode"], p["target_rps"]) for p in overhead["points"]] == [("non_stream", 10.0), ("stream", 10.0)]
    assert all(p["routing_p99_ms"] is not None for p in overhead["points"])
