"""bench/quantization.py's pieces: the capacity table, the summary's ratios, and the torch part's
variants measured on a tiny model (scores against float32, side-by-side steps, weight bytes)."""

from __future__ import annotations

from pathlib import Path

from bench.quantization import VARIANTS, capacity, sim_summary, weight_bytes
from bench.torch_variants import decode_step_variants, prefill_step_variants, score_variants
from engine.tiny_model import make_tiny_model


def test_capacity_rows_show_the_freed_memory_holding_kv() -> None:
    rows = {(r["model"], r["tensor_parallel"]): r for r in capacity()}
    assert set(rows) == {("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("llama-3.1-70b", 2)}
    for row in rows.values():
        assert row["weights_gib_per_gpu"]["int8"] < 0.6 * row["weights_gib_per_gpu"]["bf16"]
        assert row["kv_tokens"]["int8"] > row["kv_tokens"]["bf16"]
        assert row["decode_step_ms"]["int8"]["1"] < row["decode_step_ms"]["bf16"]["1"]
    assert rows[("llama-3.1-70b", 2)]["kv_tokens"]["int8"] > 5 * rows[("llama-3.1-70b", 2)]["kv_tokens"]["bf16"]


def test_summary_pairs_each_bf16_run_with_its_quantized_twin() -> None:
    base = {"model": "m", "kv_fraction": 0.25, "program_rate_per_s": 0.2, "policy": "pitstop"}
    rows = [base | {"quantization": "bf16", "num_blocks": 10, "jct_avg_s": 30.0, "jct_p90_s": 60.0,
                    "prefill_tokens_computed": 900},
            base | {"quantization": "int8", "num_blocks": 15, "jct_avg_s": 20.0, "jct_p90_s": 50.0,
                    "prefill_tokens_computed": 600}]
    (row,) = sim_summary(rows)
    assert row["avg_speedup"] == 1.5 and row["p90_speedup"] == 1.2 and row["num_blocks"] == {"bf16": 10, "w8a8": 15}


def test_torch_variants_measure_float32_int8_and_fp8(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    accuracy = score_variants(model_dir, [list(range(3, 99)), list(range(200, 260))], VARIANTS)
    assert accuracy["scored_tokens"] == 95 + 59 and accuracy["reference"] == "float32"
    assert 0 < accuracy["int8"]["mean_abs_logprob_error"] < accuracy["fp8"]["mean_abs_logprob_error"]
    decode = decode_step_variants(model_dir, batch=2, context=40, steps=2, rounds=1, variants=VARIANTS)
    prefill = prefill_step_variants(model_dir, length=48, rounds=1, variants=VARIANTS)
    assert set(decode) == set(prefill) == set(VARIANTS) and all(ms > 0 for ms in [*decode.values(), *prefill.values()])
    sizes = weight_bytes(model_dir)
    assert sizes["int8"]["projections"] < 0.3 * sizes["float32"]["projections"]
    assert sizes["int8"]["all"] - sizes["int8"]["projections"] == sizes["float32"]["all"] - sizes["float32"]["projections"]
