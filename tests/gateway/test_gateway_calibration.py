"""A route group's cost preference tied to a budget on its own traffic, over real sockets: the group
starts at its configured preference, calibrates on the requests it logged once there are enough, routes
the next ones at the calibrated preference, reports what it did in /v1/models and /metrics, calibrates
again when its router is reloaded, and keeps routing when its traffic cannot be read (a missing file,
the outcome database going away). And, on the calibration step alone, that the target holds for what
the group's own exploration (uniform, or among its best few) serves."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from gateway.route_calibration import calibrate_group
from storage.traffic import LoggedRequest
from tests.gateway.harness import (
    Gateway,
    GatewayProcess,
    gateway_config,
    gateway_processes,
    model_entry,
    read_outcomes,
    run_cli,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.routers.conftest import GRADED, graded_prompts, train_graded_router
from tests.storage.conftest import pg_url_for, scratch_database
from tests.storage.pg_cluster import ThrowawayPostgres

SHARE = 0.4
TEMPLATES = GRADED


def prompts(n_per_template: int, seed: int) -> list[str]:
    return graded_prompts(n_per_template, seed)


def train(path: Path, seed: int = 0) -> str:
    return train_graded_router(path, seed)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("router") / "auto.joblib"
    train(path)
    return path


def config(tmp_path: Path, api_base: str, artifact: Path, storage_url: str | None = None, **calibrate: object) -> dict:
    models = [model_entry("cheap", api_base, price_in=1e-7, price_out=1e-7),
              model_entry("costly", api_base, tier="strong", price_in=1e-5, price_out=1e-5)]
    group = {"name": "auto", "models": ["cheap", "costly"], "router": "pitstop", "router_artifact": str(artifact),
             "cost_preference": 0.0, "reload_interval_s": 0.2,
             "calibrate": {"model_share": SHARE, "min_requests": 60, "interval_s": 0.5, **calibrate}}
    return gateway_config(tmp_path, models, [group], storage_url=storage_url)


def ask(gw: Gateway, texts: list[str]) -> list[str]:
    """The model each prompt was routed to."""
    routed = []
    with gw.http() as http:
        for text in texts:
            response = http.post("/v1/chat/completions", json={
                "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            assert response.status_code == 200, response.text
            routed.append(response.headers["x-pitstop-model"])
    return routed


def calibration(gw: Gateway) -> dict:
    with gw.openai() as client:
        group = next(m for m in client.models.list().data if m.id == "auto")
    return group.model_dump()["pitstop"]


def gauge(gw: Gateway, name: str) -> float:
    with gw.http() as http:
        text = http.get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith(name + "{") and 'route_group="auto"' in line)
    return float(line.rsplit(" ", 1)[1])


def test_a_group_calibrates_on_its_logged_traffic_and_routes_at_the_budget(tmp_path: Path, upstreams,
                                                                            artifact: Path) -> None:
    with running_gateway(config(tmp_path, upstreams[0].api_base, artifact)) as gw:
        state = wait_until(lambda: calibration(gw)["calibration"], what="the first calibration run")
        assert state["status"] == "too_little_traffic" and calibration(gw)["cost_preference"] == 0.0
        before = ask(gw, prompts(10, seed=1))
        assert before.count("costly") / len(before) > 0.6  # preference 0: quality alone

        gw.flush()  # the 80 requests are in the outcome log: enough traffic
        state = wait_until(lambda: (s := calibration(gw)["calibration"])["status"] == "calibrated" and s,
                           what="a calibration on the logged requests")
        assert state["kind"] == "model_share" and state["model"] == "costly" and state["target"] == SHARE
        assert state["requests"] >= 60 and state["traffic"] == "outcomes"
        assert SHARE - 0.15 <= state["achieved"] <= SHARE
        assert state["held_out_achieved"] is not None and abs(state["held_out_achieved"] - SHARE) <= 0.2
        preference = state["cost_preference"]
        assert preference > 0

        after = ask(gw, prompts(10, seed=2))  # new prompts of the same kinds
        share = after.count("costly") / len(after)
        assert share <= SHARE + 0.15 and share < before.count("costly") / len(before) - 0.2
        rows = gw.rows(gw.request_ids[-len(after):])
        assert all(r["cost_preference"] > 0 for r in rows)  # routed at a calibrated preference, logged
        # it recalibrates every 0.5 s on the growing log: the gauge shows the value of the moment
        around = [calibration(gw)["cost_preference"], gauge(gw, "pitstop_route_group_cost_preference"),
                  calibration(gw)["cost_preference"]]
        assert around[1] in (pytest.approx(around[0]), pytest.approx(around[2]))
        assert gauge(gw, "pitstop_route_group_calibration_target") == SHARE

        with gw.http() as http:  # a request's own preference still overrides the group's
            response = http.post("/v1/chat/completions", headers={"x-pitstop-cost-preference": "0"}, json={
                "model": "auto", "max_tokens": 2,
                "messages": [{"role": "user", "content": "Design a database schema for a cat shop."}]})
        assert response.headers["x-pitstop-model"] == "costly"


def test_an_average_cost_target_is_met_in_real_dollars(tmp_path: Path, upstreams, artifact: Path) -> None:
    """The router predicts ~40-token answers (its training data); the upstream answers in 5 words, so
    real costs run far below predicted ones. The log's real costs put the target in real dollars."""
    target = 5e-5  # USD a request: between the cheap model's ~1e-6 and the costly one's ~1e-4, for real
    raw = config(tmp_path, upstreams[0].api_base, artifact, model_share=None, avg_cost_usd=target, min_requests=40)
    with running_gateway(raw) as gw:
        ask(gw, prompts(6, seed=10))
        gw.flush()
        state = wait_until(lambda: (s := calibration(gw)["calibration"])["status"] == "calibrated" and s,
                           what="a calibration on the logged requests")
        ratio = state["real_over_predicted"]
        assert ratio is not None and 0.05 < ratio < 0.5 and state["achieved"] <= target
        start = len(gw.request_ids)
        routed = ask(gw, prompts(5, seed=11))
        real = [r["cost_usd"] for r in gw.rows(gw.request_ids[start:])]
        assert 0 < routed.count("costly") < len(routed)
        assert abs(sum(real) / len(real) - target) <= 0.4 * target  # what was really spent, a request

        group = gw.state.routes.groups["auto"]  # the same prompts without their real costs: predicted dollars
        unscaled = calibrate_group(group, [LoggedRequest(p) for p in prompts(6, seed=10)])
        assert unscaled.real_over_predicted is None
        assert unscaled.cost_preference > state["cost_preference"]  # would have bought far fewer costly calls


def test_held_out_traffic_calibrates_at_start_and_again_on_reload(tmp_path: Path, upstreams, artifact: Path) -> None:
    export = tmp_path / "traffic.jsonl"
    export.write_text("".join(json.dumps({"prompt": p, "route_group": "auto", "status": "ok"}) + "\n"
                              for p in prompts(12, seed=3)))
    own = tmp_path / "auto.joblib"
    own.write_bytes(artifact.read_bytes())
    raw = config(tmp_path, upstreams[0].api_base, own, traffic=f"outcomes:{export}", interval_s=3600)
    with running_gateway(raw) as gw:
        state = wait_until(lambda: (s := calibration(gw)["calibration"]) and s["status"] == "calibrated" and s,
                           what="a calibration on the export file")
        assert state["requests"] == 96 and state["achieved"] <= SHARE
        assert state["since"] == {"requests": 0, "average": None}
        routed = ask(gw, prompts(2, seed=9))  # how close it lands live: the share among the requests since
        assert calibration(gw)["calibration"]["since"] == {"requests": 16, "average": routed.count("costly") / 16}
        assert 0 < routed.count("costly") < 16
        with gw.http() as http:
            assert f'traffic="since"}} {routed.count("costly") / 16}' in http.get("/metrics").text
            # an agent session: its second turn stays on the first turn's model, whatever the router
            # would choose, so only the first turn counts toward `since`
            first = [{"role": "user", "content": "Design a database schema for a cat shop."}]
            second = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Add 3 and 4."}]
            models = [http.post("/v1/chat/completions", headers={"x-session-id": "agent-1"}, json={
                "model": "auto", "max_tokens": 2, "messages": messages}).headers["x-pitstop-model"]
                for messages in (first, second)]
        assert models == ["costly", "costly"] and ask(gw, ["Add 3 and 4."]) == ["cheap"]
        assert calibration(gw)["calibration"]["since"]["requests"] == 16 + 1 + 1
        new_version = train(own, seed=7)  # replaced: reloaded, and calibrated again within the hour
        state = wait_until(lambda: (s := calibration(gw)["calibration"])["router_version"] == new_version and s,
                           what="a calibration of the reloaded router")
        assert state["status"] == "calibrated" and state["achieved"] <= SHARE
        assert state["since"]["requests"] == 0  # counted afresh from the new calibration


def test_traffic_that_cannot_be_read_keeps_the_configured_preference(tmp_path: Path, upstreams,
                                                                      artifact: Path) -> None:
    missing = tmp_path / "no-such-export.jsonl"
    raw = config(tmp_path, upstreams[0].api_base, artifact, traffic=f"outcomes:{missing}")
    raw["route_groups"][0]["cost_preference"] = 0.25
    with running_gateway(raw) as gw:
        state = wait_until(lambda: calibration(gw)["calibration"], what="a calibration run")
        assert state["status"] == "failed" and str(missing) in state["error"]
        assert state["cost_preference"] == 0.25
        ask(gw, prompts(1, seed=4))
        assert all(r["cost_preference"] == 0.25 for r in gw.rows())
        assert gauge(gw, "pitstop_route_group_cost_preference") == 0.25


def test_the_outcome_database_going_away_keeps_the_last_calibration(tmp_path: Path, upstreams, artifact: Path,
                                                                     cluster: ThrowawayPostgres) -> None:
    raw = config(tmp_path, upstreams[0].api_base, artifact, storage_url=cluster.url, min_requests=40)
    with running_gateway(raw) as gw:
        ask(gw, prompts(6, seed=5))
        gw.flush()
        calibrated = wait_until(lambda: (s := calibration(gw)["calibration"])["status"] == "calibrated" and s,
                                what="a calibration on PostgreSQL")
        cluster.stop()
        failed = wait_until(lambda: (s := calibration(gw)["calibration"])["status"] == "failed" and s,
                            what="a calibration run that finds the database gone")
        assert "OperationalError" in failed["error"]
        assert failed["cost_preference"] == calibrated["cost_preference"]  # the last good one stays
        routed = ask(gw, prompts(1, seed=6))  # still served while the log and the traffic are unreachable
        assert len(routed) == len(TEMPLATES)
        cluster.start()
        wait_until(lambda: calibration(gw)["calibration"]["status"] == "calibrated", timeout=60,
                   what="a calibration once the database is back")
        with httpx.Client(base_url=gw.url) as http:
            assert http.get("/readyz").status_code in (200, 503)


def test_two_replicas_on_one_database_calibrate_to_the_same_preference(tmp_path: Path, upstreams, artifact: Path,
                                                                       pg_admin: sa.Engine, pg_migrated_template: str
                                                                       ) -> None:
    """Gateway replicas share no state but the outcome log: each calibrates on its own, and reading the
    same rows (ordered by time, then request id) they must land on the same preference, or a client's
    route would depend on which replica it reached."""
    with scratch_database(pg_admin, template=pg_migrated_template) as name:
        url = pg_url_for(name)
        configs = []
        for i in range(2):  # one folder each: own config and spool file
            (tmp_path / f"gw{i}").mkdir()
            raw = config(tmp_path / f"gw{i}", upstreams[0].api_base, artifact, storage_url=url)
            configs.append(write_config(tmp_path / f"gw{i}" / "pitstop.yaml", raw))
        with gateway_processes(*configs) as replicas:
            texts = prompts(10, seed=11)
            for i, text in enumerate(texts):  # each replica serves every other request
                response = httpx.post(replicas[i % 2].url + "/v1/chat/completions", timeout=30, json={
                    "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
                assert response.status_code == 200, response.text
            wait_until(lambda: len(read_outcomes(url)) == len(texts), what="every request in the shared log")

            def settled(replica: GatewayProcess) -> dict | None:  # a calibration run that began after the last row was written
                with httpx.Client(base_url=replica.url) as http:
                    group = next(m for m in http.get("/v1/models").json()["data"] if m["id"] == "auto")
                state = group["pitstop"]["calibration"]
                return state if state and state["status"] == "calibrated" and state["requests"] == len(texts) else None

            states = [wait_until(lambda r=r: settled(r), what="a calibration on all of the log") for r in replicas]
    assert states[0]["cost_preference"] > 0
    for field in ("cost_preference", "achieved", "held_out_achieved"):
        assert states[0][field] == states[1][field], field


def test_pitstop_calibrate_router_reports_the_preference_for_a_budget(tmp_path: Path, artifact: Path) -> None:
    export = tmp_path / "traffic.jsonl"
    export.write_text("".join(json.dumps({"prompt": p, "route_group": "auto"}) + "\n" for p in prompts(10, seed=8)))
    raw = config(tmp_path, "http://127.0.0.1:9/v1", artifact)
    del raw["route_groups"][0]["calibrate"]
    path = write_config(tmp_path / "pitstop.yaml", raw)
    done = run_cli("calibrate", "router", "--config", str(path), "--group", "auto", "--avg-cost-usd", "2e-4",
                   "--traffic", f"outcomes:{export}")
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["status"] == "calibrated" and state["kind"] == "avg_cost" and state["requests"] == 80
    assert 1e-4 <= state["achieved"] <= 2e-4 and state["cost_preference"] > 0
    assert state["held_out_achieved"] is not None

    no_target = run_cli_here("calibrate", "router", "--config", str(path), "--group", "auto")
    assert no_target.returncode == 2 and "exactly one target" in no_target.stderr
    unknown = run_cli_here("calibrate", "router", "--config", str(path), "--group", "nope", "--model-share", "0.5")
    assert unknown.returncode == 2 and "no route group 'nope'" in unknown.stderr
    missing = run_cli_here("calibrate", "router", "--config", str(path), "--group", "auto", "--model-share", "0.5",
                      "--traffic", "outcomes:/no/such/file.jsonl")
    assert missing.returncode == 2 and "/no/such/file.jsonl" in missing.stderr


@pytest.mark.parametrize(("among", "share_of_drawn"), [(None, 1 / 3), (2, 1 / 2)])
def test_calibration_counts_what_the_groups_own_exploration_serves(tmp_path: Path, among: int | None,
                                                                   share_of_drawn: float) -> None:
    """Three tiers under the tier prior, half the requests explored: once the choice leaves the large
    model, it still gets half of them x its chance in the pool (1/3 of all models; 1/2 of the best two,
    where it is second)."""
    from gateway.config import parse_settings  # noqa: PLC0415
    from gateway.routing import RouteTable  # noqa: PLC0415

    api = "http://127.0.0.1:9/v1"
    models = [model_entry("small", api, tier="weak", price_in=1e-7, price_out=1e-7),
              model_entry("mid", api, tier="medium", price_in=1e-6, price_out=1e-6),
              model_entry("large", api, tier="strong", price_in=1e-5, price_out=1e-5)]
    group = {"name": "auto", "models": ["small", "mid", "large"], "router": "tier-prior", "explore_epsilon": 0.5,
             "explore_among": among, "calibrate": {"model_share": 0.3, "model": "large", "min_requests": 10}}
    routes = RouteTable(parse_settings(gateway_config(tmp_path, models, [group])))
    state = calibrate_group(routes.groups["auto"], [LoggedRequest(p) for p in prompts(2, seed=3)])
    assert state.status == "calibrated" and state.cost_preference > 0
    assert state.achieved == pytest.approx(0.5 * share_of_drawn)


def test_an_export_file_is_calibrated_on_as_the_log_is(tmp_path: Path, artifact: Path) -> None:
    """Rows the router routed carry their model, real cost and verify outcome: an average-cost target is
    met in real dollars, and a verifying group counts its verifier (here one from outside the group) at
    the file's rates. Rows without a router (hand-written, or a session's later turns) give prompts only."""
    from gateway.config import parse_settings  # noqa: PLC0415
    from gateway.route_calibration import load_traffic  # noqa: PLC0415
    from gateway.routing import RouteTable  # noqa: PLC0415

    texts = prompts(6, seed=12)
    export = tmp_path / "traffic.jsonl"
    routed = [{"prompt": p, "route_group": "auto", "status": "ok", "router_name": "pitstop", "model": "cheap",
               "cost_usd": 3e-6, "routed_model": "cheap", "verify_outcome": "escalated" if i % 4 == 0 else "accepted"}
              for i, p in enumerate(texts)]
    export.write_text("".join(json.dumps(r) + "\n" for r in [*routed, {"prompt": "Add 3 and 4.", "route_group": "auto"}]))
    raw = config(tmp_path, "http://127.0.0.1:9/v1", artifact, model_share=None, avg_cost_usd=5e-5,
                 traffic=f"outcomes:{export}", min_requests=20)
    raw["model_list"].append(model_entry("judge", "http://127.0.0.1:9/v1", price_in=2e-7, price_out=2e-7))
    raw["route_groups"][0]["verify"] = {"verifiers": ["judge"]}
    group = RouteTable(parse_settings(raw)).groups["auto"]
    traffic = load_traffic(group.group.calibrate, "auto", None)
    assert len(traffic) == len(texts) + 1 and (traffic[0].pick, traffic[-1].pick) == ("cheap", None)
    state = calibrate_group(group, traffic)
    assert state.status == "calibrated" and state.real_over_predicted is not None
    assert state.verify_rates is not None and state.verify_rates["logged"] == {"cheap": len(texts)}
    assert state.verify_rates["escalated"]["cheap"] == pytest.approx(sum(i % 4 == 0 for i in range(len(texts))) / len(texts))
    plain = calibrate_group(group, [LoggedRequest(r.prompt) for r in traffic])  # prompts alone: predicted dollars
    assert plain.real_over_predicted is None and plain.verify_rates["logged"] == {}
