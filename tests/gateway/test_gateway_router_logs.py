"""`pitstop eval router-logs` on what a real gateway logged: requests routed by a learned router with
exploration over real sockets, feedback posted for each, then off-policy estimates of the router in
place and of a candidate, from the database (SQLite and PostgreSQL) and from an export file. The feedback is each template's
known success rate for the model that served it, so every policy's true value on these requests is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.routing import GroupRouter, estimate_tokens
from routers.artifact import load_router
from routers.base import RoutingRequest
from routers.choice import choose
from routers.data.table import file_digest
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    request_id_of,
    run_cli,
    run_cli_here,
    running_gateway,
    write_config,
)
from tests.routers.conftest import GRADED, WORDS, train_graded_router

EPSILON = 0.3
PREFERENCE = 0.3
COSTLY_RIGHT = 0.9


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("routers")
    paths = {"current": folder / "auto.joblib", "zero": folder / "zero.joblib"}
    train_graded_router(paths["current"])
    train_graded_router(paths["zero"], family="zero")
    return paths



def config(tmp_path: Path, api_base: str, artifact: Path, epsilon: float = EPSILON, storage_url: str | None = None
           ) -> dict:
    models = [model_entry("cheap", api_base, price_in=1e-7, price_out=1e-7),
              model_entry("costly", api_base, tier="strong", price_in=1e-5, price_out=1e-5)]
    group = {"name": "auto", "models": ["cheap", "costly"], "router": "pitstop", "router_artifact": str(artifact),
             "cost_preference": PREFERENCE, "explore_epsilon": epsilon}
    return gateway_config(tmp_path, models, [group], storage_url=storage_url)


def traffic(reps: int, seed: int) -> list[tuple[str, str]]:
    """(template, prompt) pairs over every graded template."""
    rng = np.random.default_rng(seed)
    return [(t, t.format(a=rng.integers(2, 999), b=rng.integers(2, 999), w=WORDS[rng.integers(len(WORDS))]))
            for _ in range(reps) for t in GRADED]


def true_quality(template: str, model: str) -> float:
    return COSTLY_RIGHT if model == "costly" else GRADED[template]


def serve_with_feedback(gw: Gateway, pairs: list[tuple[str, str]]) -> list[str]:
    """Each prompt routed through the group, then its feedback posted: the served model's true rate."""
    served = []
    with gw.http() as http:
        for template, prompt in pairs:
            response = http.post("/v1/chat/completions", json={
                "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]})
            assert response.status_code == 200, response.text
            model = response.headers["x-pitstop-model"]
            feedback = http.post("/v1/feedback", json={"request_id": request_id_of(response),
                                                       "value": true_quality(template, model)})
            assert feedback.status_code == 202, feedback.text
            served.append(model)
    return served


def true_value(group: GroupRouter, artifact: Path, pairs: list[tuple[str, str]], preference: float = PREFERENCE
               ) -> float:
    """What the artifact's router really gets on these prompts at `preference`, decided the gateway's
    way (`choose` request by request, not the report's vectorised table)."""
    router = load_router(artifact)
    total = 0.0
    for template, prompt in pairs:
        request = RoutingRequest(prompt, estimate_tokens(prompt))
        decision = choose(router.estimate(request, group.candidates), group.candidates, request.prompt_tokens,
                          preference, router.name, router.version)
        total += true_quality(template, group.model_for[decision.model])
    return total / len(pairs)


def within(estimate: dict, truth: float, errors: float = 4.0, floor: float = 0.01) -> bool:
    """Within `errors` standard errors of the truth, or `floor`: where the outcome model fits the logged
    feedback almost exactly, the doubly robust interval shrinks to +-0.001 while a thin policy's
    estimate can still miss by a few thousandths (0.8974 against 0.900 once in stop 26's runs)."""
    standard_error = (estimate["high"] - estimate["low"]) / (2 * 1.959964)
    return abs(estimate["mean"] - truth) <= max(errors * standard_error, floor)


def test_router_logs_estimates_the_router_in_place_and_a_candidate(tmp_path: Path, upstreams, storage_url: str,
                                                                    artifacts: dict[str, Path]) -> None:
    raw = config(tmp_path, upstreams[0].api_base, artifacts["current"], storage_url=storage_url)
    path = write_config(tmp_path / "pitstop.yaml", raw)
    pairs = traffic(20, seed=1)
    with running_gateway(raw) as gw:
        served = serve_with_feedback(gw, pairs)
        with gw.http() as http:  # no feedback: not evaluable
            http.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "Add 1 and 2."}]})
        gw.flush()
        group = gw.state.routes.groups["auto"]
        truths = {name: true_value(group, artifacts[name], pairs) for name in ("current", "zero")}
        quality_first = true_value(group, artifacts["current"], pairs, preference=0.0)
        logged_quality = float(np.mean([true_quality(t, m) for (t, _), m in zip(pairs, served, strict=True)]))

    done = run_cli("eval", "router-logs", "--config", str(path), "--group", "auto",
                   "--artifact", str(artifacts["zero"]), "--out", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["requests"] == len(pairs) and report["skipped"] == {"no_feedback": 1}
    assert report["exploration_rate"] == pytest.approx(EPSILON)
    assert report["logged"]["quality"] == pytest.approx(logged_quality)
    current, zero = report["policies"]
    # zero sends every request to one model: on about half it differs from the logging router, whose
    # exploration served its choice there only ~0.15 x 80 times, fewer than the 30 a sound estimate needs
    assert not current["thin"] and current["differs_from_logging"] == 0.0
    assert zero["thin"] and zero["differs_from_logging"] > 0.2 and zero["outcomes_where_it_differs"] < 30
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith("zero.joblib routes ")
    assert current["label"] == "current" and current["artifact"] == str(artifacts["current"])
    assert zero["label"] == "zero.joblib" and zero["router"] == "zero"
    # the upstream answers in 5 words, far below the ~40 tokens the routers predict: real costs run low
    assert 0 < current["real_over_predicted"] < 0.6 and 0 < zero["real_over_predicted"] < 0.6
    for policy, name in ((current, "current"), (zero, "zero")):
        quality = policy["quality"]
        assert within(quality["dr"], truths[name]), (name, quality, truths[name])
        assert quality["dr"]["high"] - quality["dr"]["low"] < 0.2
        assert policy["unsupported"] == 0.0 and 0 < policy["effective_requests"] <= len(pairs)
        assert sum(policy["share"].values()) == pytest.approx(1.0)
    assert zero["vs_current"]["quality"]["mean"] == pytest.approx(
        zero["quality"]["dr"]["mean"] - current["quality"]["dr"]["mean"])
    assert "vs_current" not in current
    spend = report["same_spend"]
    assert spend["target_cost_usd"] == current["cost_usd"]["dr"]["mean"] > 0
    assert [p["label"] for p in spend["policies"]] == ["current", "zero.joblib"]
    assert all(p["cost_preference"] >= 0 for p in spend["policies"])

    at_zero = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--cost-preference", "0")
    assert at_zero.returncode == 0, at_zero.stderr
    current_at_zero = json.loads(at_zero.stdout)["policies"][0]
    assert json.loads(at_zero.stdout)["cost_preference"] == 0.0
    assert within(current_at_zero["quality"]["dr"], quality_first)
    assert current_at_zero["share"]["costly"] > current["share"]["costly"]  # quality alone: the costly model more

    export = tmp_path / "outcomes.jsonl"  # the same log through an export file: the same estimates
    assert run_cli_here("export", "outcomes", "--config", str(path), "--out", str(export)).returncode == 0
    from_file = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--logs", str(export),
                        "--artifact", str(artifacts["zero"]))
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["policies"] == report["policies"]
    for source in ([], ["--logs", str(export)]):  # only what was logged since a time: the database's and the file's
        since = ["eval", "router-logs", "--config", str(path), "--group", "auto", *source, "--since"]
        everything = run_cli_here(*since, "2020-01-01T00:00:00")
        assert everything.returncode == 0 and json.loads(everything.stdout)["requests"] == len(pairs)
        later = run_cli_here(*since, "2100-01-01")  # no zone: UTC
        assert later.returncode == 1 and json.loads(later.stdout)["requests"] == 0


def test_router_logs_without_exploration_warns_and_rejects_bad_input(tmp_path: Path, upstreams,
                                                                      artifacts: dict[str, Path]) -> None:
    raw = config(tmp_path, upstreams[0].api_base, artifacts["current"], epsilon=0.0)
    path = write_config(tmp_path / "pitstop.yaml", raw)
    with running_gateway(raw) as gw:
        serve_with_feedback(gw, traffic(3, seed=2))
        gw.flush()
    export = tmp_path / "outcomes.jsonl"
    assert run_cli("export", "outcomes", "--config", str(path), "--out", str(export)).returncode == 0
    trained_on_it = tmp_path / "from-logs.joblib"
    train_graded_router(trained_on_it, seed=3, files={str(export): file_digest([export])[str(export)]})

    done = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--logs", str(export),
                   "--artifact", str(trained_on_it))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    current = report["policies"][0]
    # unexplored: the router in place agrees with every logged choice, so DR is exactly the logged mean
    assert report["exploration_rate"] == 0.0 and current["agrees_with_served"] == 1.0
    assert current["quality"]["dr"]["mean"] == pytest.approx(report["logged"]["quality"])
    assert "no request was explored" in done.stderr and "trained on this very log" in done.stderr
    candidate = report["policies"][1]
    assert candidate["unsupported"] == candidate["differs_from_logging"]  # unexplored: nothing seen where it differs
    assert candidate["outcomes_where_it_differs"] == 0
    assert candidate["vs_current"]["outcomes"] == 0 and candidate["vs_current"]["thin"] == (
        candidate["vs_current"]["differ"] > 0)
    assert len(report["warnings"]) == 2 + (candidate["thin"] or candidate["vs_current"]["thin"])

    negative = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--cost-preference", "-1")
    assert negative.returncode == 2 and "--cost-preference must be a number >= 0" in negative.stderr
    bad_time = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--since", "yesterday")
    assert bad_time.returncode == 2 and "not an ISO 8601 time: 'yesterday'" in bad_time.stderr
    unknown = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "nope")
    assert unknown.returncode == 2 and "no route group 'nope'" in unknown.stderr
    missing = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--artifact", "/no/such.joblib")
    assert missing.returncode == 2 and "cannot load router artifact /no/such.joblib" in missing.stderr
    no_logs = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--logs", "/no/such.jsonl")
    assert no_logs.returncode == 2 and "cannot read the logs /no/such.jsonl" in no_logs.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "Add 1 and 2.", "route_group": "auto", "model": "cheap",
                                 "router_name": "pitstop", "status": "ok", "quality": None}) + "\n")
    nothing = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--logs", str(empty))
    assert nothing.returncode == 1 and "nothing to evaluate" in nothing.stderr
    assert json.loads(nothing.stdout)["skipped"] == {"no_feedback": 1}


def test_exploration_among_the_best_two_is_logged_and_read_back(tmp_path: Path, upstreams) -> None:
    """A three-model group exploring among its two best by utility: the rows carry epsilon and pool, the
    worst model is never served, and the job knows a router that picks it is unsupported there."""
    api = upstreams[0].api_base
    models = [model_entry("small", api, tier="weak", price_in=1e-7, price_out=1e-7),
              model_entry("mid", api, tier="medium", price_in=1e-6, price_out=1e-6),
              model_entry("large", api, tier="strong", price_in=1e-5, price_out=1e-5)]
    group = {"name": "auto", "models": ["small", "mid", "large"], "router": "tier-prior",
             "explore_epsilon": 0.5, "explore_among": 2}  # preference 0: large, then mid, then small
    raw = gateway_config(tmp_path, models, [group])
    path = write_config(tmp_path / "pitstop.yaml", raw)
    served = []
    with running_gateway(raw) as gw, gw.http() as http:
        listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert listed["auto"]["pitstop"]["exploration"] == {"epsilon": 0.5, "among": 2}
        for i in range(80):
            response = http.post("/v1/chat/completions", json={
                "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": f"Question {i}?"}]})
            assert response.status_code == 200, response.text
            served.append(response.headers["x-pitstop-model"])
            value = {"large": 0.9, "mid": 0.7, "small": 0.5}[served[-1]]
            assert http.post("/v1/feedback", json={"request_id": request_id_of(response),
                                                   "value": value}).status_code == 202
        gw.flush()
    # 20 of 80 expected (epsilon 0.5 among two); unseeded, so the bounds sit where Binomial(80, 0.25) falls
    # outside about once in 370,000 runs (a share above 0.1 failed about once in 1,500): 0 means no exploration,
    # 80 exploration every time.
    assert "small" not in served and 5 <= served.count("mid") <= 40
    export = tmp_path / "outcomes.jsonl"
    done = run_cli("export", "outcomes", "--config", str(path), "--out", str(export), "--route-group", "auto",
                   "--since", "2020-01-01")
    assert done.returncode == 0 and f"wrote {len(served)} rows" in done.stdout, done.stderr
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert {(r["explore_epsilon"], tuple(r["explore_pool"])) for r in rows} == {(0.5, ("large", "mid"))}
    assert {r["model"]: r["propensity"] for r in rows} == {"large": 0.75, "mid": 0.25}

    done = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["exploration_rate"] == 0.5 and report["exploration_pool"] == 2.0
    current = report["policies"][0]
    assert current["unsupported"] == 0.0 and not current["thin"]
    assert within(current["quality"]["dr"], 0.9)
    # at a steep preference the same router picks the cheapest model, which no pool held
    cheap = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--cost-preference", "100")
    assert cheap.returncode == 0, cheap.stderr
    steep = json.loads(cheap.stdout)["policies"][0]
    assert steep["share"]["small"] == 1.0 and steep["unsupported"] == 1.0 and steep["thin"]
    assert "could not have served there" in cheap.stderr and "widen explore_among" in cheap.stderr
