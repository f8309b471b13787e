"""bench/lora.py's measurements on the tiny model: each adapter count's engine runs its steps and the
rows compare with the base model's."""

from __future__ import annotations

from pathlib import Path

from bench.lora import decode_steps, prefill_steps
from engine.tiny_lora import make_tiny_lora
from engine.tiny_model import make_tiny_model


def test_decode_and_prefill_rows_compare_adapter_counts_with_the_base_model(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    adapters = {f"a{i}": make_tiny_lora(model_dir, tmp_path / f"a{i}", rank=2, seed=i) for i in range(2)}
    decode = decode_steps(model_dir, adapters, [0, 1, 2], batch=2, context=20, steps=2, rounds=1)
    prefill = prefill_steps(model_dir, adapters, [0, 2], prompts_n=2, length=20, rounds=2)
    assert [r["adapters"] for r in decode] == [0, 1, 2] and [r["adapters"] for r in prefill] == [0, 2]
    assert decode[0]["over_base"] == prefill[0]["over_base"] == 1.0
    assert all(r["median_step_ms"] > 0 for r in decode + prefill)
