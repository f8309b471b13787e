"""Verifying a cheap pick's short answer (routers/verify.py) and its replay on recorded replies
(routers/verify_eval.py), against hand-computed cases; and `pitstop eval router` end to end on a
RouterBench-format folder, where the verified router is reported beside the router it verifies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from routers.data.catalog import load_dataset
from routers.data.table import long_table, to_wide
from routers.metrics import aiq
from routers.run_eval import run_eval
from routers.verify import VerifyPolicy, could_be_short, short_answer
from routers.verify_eval import choose_verifiers, replay

SHORT = [
    ("B", "B"), ("b\n", "B"), ("A)", "A"), ("(c).", "C"), ("D\nBecause the moon is...", "D"),
    ("Answer: E", "E"), ("The answer is A", "A"), ("The correct answer is (B)", "B"), ("42", "42"),
    ("-3.5.", "-3.5"), ("1,200", "1200"), ("  7 ", "7"),
]
FREE = ["A dog is a mammal.", "Based on the passage, B", "def f(x):\n    return x", "I don't know",
        "12 apples and 3 pears", "G\n", "Answer: maybe"]


@pytest.mark.parametrize(("reply", "answer"), SHORT)
def test_short_answers_are_read(reply: str, answer: str) -> None:
    assert short_answer(reply) == answer


@pytest.mark.parametrize(("reply", "answer"), SHORT)
def test_every_start_of_a_short_answer_could_be_one(reply: str, answer: str) -> None:
    """A stream is held while its start could still be a short answer: never let one go early."""
    assert all(could_be_short(reply[:k]) for k in range(len(reply) + 1)), answer


@pytest.mark.parametrize(("start", "could"), [
    ("", True), ("  ", True), ("(", True), ("The", True), ("The correct ans", True), ("Answer:", True),
    ("-", True), ("1,2", True), ("3.", True), ("The largest", False), ("Jupiter", False), ("Sure! Here", False),
    ("A d", False), ("42 a", False), ("I think", False), ("def", False),
])
def test_free_text_is_told_from_its_first_words(start: str, could: bool) -> None:
    assert could_be_short(start) is could


@pytest.mark.parametrize("reply", FREE)
def test_a_free_text_reply_stops_being_held_before_it_ends(reply: str) -> None:
    assert not could_be_short(reply)


@pytest.mark.parametrize("reply", ["", None, *FREE])
def test_free_text_has_no_short_answer(reply: str | None) -> None:
    assert short_answer(reply) is None


def test_policy_never_verifies_the_escalation_model_or_with_the_pick_itself() -> None:
    policy = VerifyPolicy(("mid", "cheap"), "strong", below=0.8)
    assert policy.applies("cheap", 0.5) and policy.applies("cheap", None)
    assert not policy.applies("cheap", 0.8) and not policy.applies("strong", 0.1)
    assert VerifyPolicy(("mid",), "strong").applies("cheap", 1.0)  # below 1.0: every pick, even at 1
    assert policy.verifiers_for("cheap") == ["mid"] and policy.verifiers_for("mid") == ["cheap"]
    assert VerifyPolicy(("mid", "cheap"), "strong", count=2).verifiers_for("other") == ["mid", "cheap"]
    assert VerifyPolicy(("strong", "mid"), "strong").verifiers_for("cheap") == ["mid"]
    assert policy.accept("A", ["A"]) and not policy.accept("A", ["B"])
    assert not policy.accept("A", [None]) and not policy.accept(None, [None])


def _three_prompts():
    """cheap / mid / strong cost 1 / 2 / 10. Prompt 0: cheap and mid both say A, cheap is right.
    Prompt 1: they disagree, cheap is wrong, strong right. Prompt 2: cheap answers in free text."""
    replies = [{"cheap": "A", "mid": "A", "strong": "B"}, {"cheap": "A", "mid": "C", "strong": "D"},
               {"cheap": "Well, it depends.", "mid": "B", "strong": "B"}]
    quality = [{"cheap": 1.0, "mid": 1.0, "strong": 0.0}, {"cheap": 0.0, "mid": 0.0, "strong": 1.0},
               {"cheap": 0.5, "mid": 1.0, "strong": 1.0}]
    cost = {"cheap": 1.0, "mid": 2.0, "strong": 10.0}
    rows = [{"dataset": "t", "prompt_id": f"p{i}", "prompt": f"q{i}", "task": "t", "split": "test", "model": m,
             "quality": quality[i][m], "cost_usd": cost[m], "prompt_tokens": 5, "output_tokens": 1,
             "answer": short_answer(replies[i][m])} for i in range(3) for m in cost]
    return to_wide(long_table(rows))


def test_replay_serves_agreement_escalates_disagreement_and_skips_free_text() -> None:
    data = _three_prompts()
    cheap, mid = data.models.index("cheap"), data.models.index("mid")
    policy = VerifyPolicy(("mid", "cheap"), "strong")
    predicted = np.full((3, 3), 0.5)
    predicted[1, cheap] = 0.9  # above `below` = 0.8 below: prompt 1 is then served unverified
    picks = np.array([[cheap, cheap, cheap], [mid, cheap, cheap]])
    out = replay(picks, predicted, data, data.quality, policy, np.array([1.0, 0.1]), np.array([0.0, 0.8, 1.0]))
    assert out.settings.tolist() == [[1.0, 0.0], [1.0, 0.8], [1.0, 1.0], [0.1, 0.0], [0.1, 0.8], [0.1, 1.0]]
    # below 0: the router's own picks
    assert out.cost[0].tolist() == [1, 1, 1] and out.quality[0].tolist() == [1, 0, 0.5]
    # below 0.8: prompt 0 checked and accepted (cheap + mid), prompt 1 not checked (predicted 0.9)
    assert out.cost[1].tolist() == [3, 1, 1] and out.quality[1].tolist() == [1, 0, 0.5]
    # below 1: prompt 1 checked, mid disagrees, escalated to strong; prompt 2 free text, never checked
    assert out.cost[2].tolist() == [3, 13, 1] and out.quality[2].tolist() == [1, 1, 0.5]
    assert out.checked[2].tolist() == [True, True, False] and out.escalated[2].tolist() == [False, True, False]
    # mid's pick on prompt 0 is verified by cheap (the next verifier), which agrees
    assert out.cost[5].tolist() == [3, 13, 1]
    assert out.points()[2].tolist() == pytest.approx([17 / 3, 2.5 / 3])


def test_choose_verifiers_prefers_the_pair_whose_agreement_means_something() -> None:
    """Four models: 'echo' always repeats the cheap pick's answer (agreement that means nothing),
    'judge' agrees only where the pick is right. The chosen policy must check cheap picks with the judge."""
    rng = np.random.default_rng(0)
    rows = []
    cost = {"cheap": 1.0, "echo": 1.0, "judge": 1.0, "strong": 20.0}
    for i in range(200):
        right = bool(rng.random() < 0.6)
        replies = {"cheap": "A", "echo": "A", "judge": "A" if right else "B", "strong": "C"}
        quality = {"cheap": float(right), "echo": float(right), "judge": 0.5, "strong": 1.0}
        rows += [{"dataset": "t", "prompt_id": f"p{i}", "prompt": "q", "task": "t", "split": "train", "model": m,
                  "quality": quality[m], "cost_usd": cost[m], "answer": replies[m]} for m in cost]
    data = to_wide(long_table(rows))
    picks = np.full((1, len(data)), data.models.index("cheap"))
    predicted = np.full((len(data), 4), 0.5)
    policy, scored = choose_verifiers(picks, predicted, data, data.quality, np.array([1.0]))
    assert policy.escalate_to == "strong" and policy.verifiers_for("cheap") == ["judge"]
    assert scored["judge > echo"] > scored["echo > judge"] == scored["echo > cheap"]


def _write_routerbench(folder: Path, n: int, seed: int) -> None:
    """RouterBench's wide format: 'small' answers its letter right on 'easy' prompts, 'other' is right
    60% of the time, 'big' (costly) is always right; all reply with a bare letter."""
    rng = np.random.default_rng(seed)
    models = {"small": 1e-5, "other": 2e-5, "big": 4e-4}
    folder.mkdir(parents=True, exist_ok=True)
    for stem in ("arc_challenge", "mbpp", "winograde"):
        for split in ("train", "test"):
            with (folder / f"{stem}_{split}.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["", "sample_id", "prompt", "eval_name",
                                 *(c for m in models for c in (m, f"{m}|model_response", f"{m}|total_cost"))])
                for i in range(n if stem != "mbpp" else 0):
                    easy = i % 2 == 0
                    truth = "ABCD"[rng.integers(4)]
                    small = truth if easy or rng.random() < 0.3 else "ABCD"[("ABCD".index(truth) + 1) % 4]
                    other = truth if rng.random() < 0.6 else "ABCD"[("ABCD".index(truth) + 2) % 4]
                    replies = {"small": small, "other": other, "big": truth}
                    topic = "the sun and the planets" if easy else "the proof of a hard lemma"
                    cells = [str([f"Question {i} about {topic}? A) x B) y C) z D) w"]), stem]
                    for m, price in models.items():
                        cells += [float(replies[m] == truth), str([replies[m]]), price * (1 + rng.random())]
                    writer.writerow([i, f"{stem}.{i}", *cells])


def test_eval_router_reports_the_verified_router_chosen_on_training_data(tmp_path: Path, tiny_encoder: Path) -> None:
    _write_routerbench(tmp_path / "routerbench_subset", 60, 0)
    data = load_dataset("routerbench", tmp_path)
    assert set(data.answers.ravel()) <= set("ABCD") and len(data.split("test")) == 120
    report = run_eval("routerbench", tmp_path / "out", ["pitstop", "zero"], [], latency_requests=5, bootstrap=20,
                      encoder_path=str(tiny_encoder), data_root=tmp_path)
    result = report["result_missing_zero"]
    verified = result["routers"]["pitstop + verify"]
    assert verified["verify"]["escalate_to"] == "big" and verified["verify"]["chosen_on"]["split"] == "train"
    assert verified["verify"]["verifiers"][0] in ("small", "other")
    # its points include the router's own (below = 0), so its hull is never under the router's
    assert verified["aiq"] >= result["routers"]["pitstop"]["aiq"]
    own = [p for p in verified["verify_points"] if p["below"] == 0.0]
    assert np.allclose([(p["cost"], p["quality"]) for p in own],
                       [(p["cost"], p["quality"]) for p in result["routers"]["pitstop"]["points"]], rtol=1e-12)
    assert max(p["escalated"] for p in verified["verify_points"]) > 0
    assert "pitstop + verify" in result["bootstrap_aiq_difference"]["vs"]
    on_budget = result["calibration_with_verify"]["targets"]  # routers/verify_calibration.py, on this data
    assert list(on_budget) == ["35% of big's cost", "50% of big's cost", "70% of big's cost"]
    assert all(len(t["verify_counted"]["held_out_over_target"]) == 6 for t in on_budget.values())
    against = result["bootstrap_aiq_difference_verified"]["vs"]["pitstop"]
    assert against["mean"] == pytest.approx(-result["bootstrap_aiq_difference"]["vs"]["pitstop + verify"]["mean"])
    written = json.loads((tmp_path / "out" / "routerbench.json").read_text())
    assert written["result_missing_zero"]["routers"]["pitstop + verify"]["aiq"] == pytest.approx(verified["aiq"])
    assert (tmp_path / "out" / "routerbench.png").stat().st_size > 0
    points = np.array([[p["cost"], p["quality"]] for p in verified["points"]])
    assert aiq(points, result["reference_cost"]) == pytest.approx(verified["aiq"])
