"""bench.vision_sharded on a tiny LLaVA: every engine timed each run, two ranks' first tokens one rank's."""

from __future__ import annotations

from pathlib import Path

from bench.vision_sharded import ENGINES, main


def test_every_engine_prefills_each_picture(tmp_path: Path) -> None:
    report = main(["--runs", "1", "--hidden", "64", "--layers", "2", "--vision-hidden", "32", "--vision-layers", "1",
                   "--out", str(tmp_path / "vision_sharded.json")])
    results = report["results"]
    assert set(results["image_prefill_ms"]) == set(ENGINES) and results["over_one_rank"]["one rank"] == 1.0
    assert results["first_token_same_as_one_rank"]["two ranks"] == "2/2"
    assert report["settings"]["image_tokens"] == 576 and (tmp_path / "vision_sharded.json").exists()
