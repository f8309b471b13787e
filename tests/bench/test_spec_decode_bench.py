"""bench/spec_decode.py: its replay of decoding on real outputs predicts the engine's own steps exactly
(the same drafts, the same acceptance), so the replayed figures are the engine's; skipped without the
shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import spec_decode
from engine.tiny_model import make_tiny_model
from routers.tokens import counting_tokenizer

pytestmark = pytest.mark.skipif(not spec_decode.TRACE.exists(),
                                reason=f"the shared data is not at {spec_decode.DATA} (see its README)")


def test_the_replay_counts_the_steps_the_engine_takes(tmp_path: Path) -> None:
    turns = [(context[-600:], output[:80]) for context, output in spec_decode.swe_agent_turns()[3:9]]
    replayed = [spec_decode.replay(turn, 4, 2, 4) for turn in turns]  # the engine's defaults
    assert sum(r["accepted_tokens"] for r in replayed) > 0
    model_dir = make_tiny_model(tmp_path / "model", layers=1, hidden=64, vocab_size=counting_tokenizer().get_vocab_size(),
                                max_position_embeddings=1024)
    measured = spec_decode.end_to_end(model_dir, turns, context=600, concurrency=1)
    assert measured["steps"]["plain"] == measured["output_tokens"] == sum(len(o) for _, o in turns)
    assert measured["steps"]["speculative"] == sum(r["steps"] for r in replayed)
    assert measured["accepted_tokens"] == sum(r["accepted_tokens"] for r in replayed)
    assert measured["draft_tokens"] == sum(r["draft_tokens"] for r in replayed)


def test_the_workloads_load_real_outputs() -> None:
    assert len(spec_decode.swe_agent_turns()) == 125
    for turns in (spec_decode.alpaca_turns(6), spec_decode.gsm8k_turns(6)):
        assert 4 <= len(turns) <= 6 and all(context and output for context, output in turns)


def test_end_to_end_runs_a_goodput_engine_beside_the_others(tmp_path: Path) -> None:
    """bench/spec_decode_goodput.py's wiring: a goodput engine whose profile makes drafts free checks
    exactly the drafts the default engine checks."""
    from engine.config import SpeculativeConfig
    from engine.step_time import LinearStepTime, save_profile

    save_profile(tmp_path / "free.json", LinearStepTime(c0=1e-3, c_draft_token=0.0))
    turns = [(context[-300:], output[:40]) for context, output in spec_decode.swe_agent_turns()[3:6]]
    model_dir = make_tiny_model(tmp_path / "model", layers=1, hidden=64, vocab_size=counting_tokenizer().get_vocab_size(),
                                max_position_embeddings=1024)
    goodput = SpeculativeConfig(draft_policy="goodput", step_time_profile=str(tmp_path / "free.json"))
    measured = spec_decode.end_to_end(model_dir, turns, 300, 1, {"speculative": spec_decode.DEFAULT, "goodput": goodput})
    assert set(measured["steps"]) == {"plain", "speculative", "goodput"}
    assert measured["accepted_tokens"] > 0
    assert (measured["goodput_draft_tokens"], measured["goodput_accepted_tokens"]) == \
        (measured["draft_tokens"], measured["accepted_tokens"])
    assert measured["steps"]["goodput"] == measured["steps"]["speculative"]
