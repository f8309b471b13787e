"""bench/gateway_semantic_cache.py at a tiny size, latency left out: its guard steps agree with the
gateway's own bucket search (the bench asserts it), and the hand-written set's rates come out."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import DATA
from bench.gateway_semantic_cache import main


def test_the_false_hit_and_re_ask_parts_run(tmp_path: Path) -> None:
    out = tmp_path / "semantic.json"
    assert main(["--per-set", "60", "--reask-sample", "5", "--sets", "gsm8k,mt_bench", "--encoders", "minilm",
                 "--skip-latency", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["encoders"]["minilm"]
    reasks = report["hand_written"]["re-asks served their answer"]["by_threshold"]["0.95"]["guard"]
    assert reasks["format"] == 1.0 and 0 < reasks["rephrase"] < reasks["wording"] < 1
    if DATA.is_dir():
        assert set(report["false_hits"]) == {"gsm8k", "mt_bench"}
        assert report["false_hits"]["gsm8k"]["asked"] == 30
