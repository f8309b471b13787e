"""This stop's engine benchmarks' pieces on small inputs: the thinking-budget steps (the end tag really
forced), the tensor-parallel roofline rows, and the fallback benchmark's gateway config."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.gateway_fallbacks import write_config
from bench.tensor_parallel import roofline_rows, variants
from bench.thinking_budget import VARIANTS, measure
from engine.tiny_model import make_tiny_model


def test_thinking_budget_steps_are_timed_for_every_variant(tmp_path: Path) -> None:
    result = measure(make_tiny_model(tmp_path / "tiny"), batch=2, context=40, rounds=1)
    assert set(result["median_step_ms"]) == set(VARIANTS) and result["steps_each"] == result["end_tag_tokens"] - 1
    assert result["over_no_budget"]["no budget"] == 1.0


def test_tensor_parallel_rows_price_70b_on_more_gpus() -> None:
    rows = roofline_rows()
    assert [r["tensor_parallel"] for r in rows] == [1, 2, 4, 8] and rows[0]["kv_tokens"] == 0  # 70B fits no one H100
    steps = [r["decode_step_ms"]["1"] for r in rows]
    assert steps == sorted(steps, reverse=True)
    assert set(variants(2)) == {"1 rank, 1 thread", "1 rank, 2 threads", "2 ranks, 1 thread each",
                                "2 ranks, 1 thread each, gloo"}


def test_fallback_bench_config_names_the_chain_only_when_asked(tmp_path: Path) -> None:
    for fallbacks in (False, True):
        write_config(tmp_path / "c.yaml", "http://a", "http://b", 9999, 5.0, fallbacks)
        config = yaml.safe_load((tmp_path / "c.yaml").read_text())
        assert ("fallbacks" in config) == fallbacks and config["server"]["cooldown_s"] == 5.0
    from gateway.config import parse_settings

    assert parse_settings(config, base_dir=tmp_path).fallbacks.on_error == {"primary": ["secondary"]}
