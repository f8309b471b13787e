"""A route group's `verify:` over real sockets with the openai SDK: the tier prior picks the cheap `weak`
model (upstream a); its short answer is checked by `judge` (upstream b) and, when they disagree, the
request goes to `strong` (upstream c). Each upstream's answer is fixed per request by an `[answer:X@name]`
directive (tests/gateway/upstream.py), and its request count says which calls were made. The outcome
row names the served model, costs every call, and says what happened in `extra.verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import ConfigError, parse_settings
from routers.data.outcomes import load_outcomes
from storage.keys import KeyStore
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    request_id_of,
    run_cli,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess

Trio = tuple[UpstreamProcess, UpstreamProcess, UpstreamProcess]
# (input, output) USD a token: the router's pick, the verifier (same tier, dearer), the escalation.
PRICES = {"weak": (1e-6, 2e-6), "judge": (2e-6, 3e-6), "strong": (1e-5, 3e-5)}
MASTER = "master-secret-for-verify-tests"


def models(trio: Trio) -> list[dict]:
    tiers = {"weak": "weak", "judge": "weak", "strong": "strong"}  # equal quality: the cheaper is picked
    return [model_entry(name, upstream.api_base, tier=tiers[name], price_in=PRICES[name][0],
                        price_out=PRICES[name][1]) for name, upstream in zip(PRICES, trio, strict=True)]


def group(name: str = "auto", **verify: Any) -> dict:
    # Cost preference 1: weak 0.6 - ~0.07 beats judge 0.6 - ~0.1 and strong 1.0 - 1.
    return {"name": name, "models": ["weak", "judge", "strong"], "router": "tier-prior", "cost_preference": 1.0,
            "verify": {"verifiers": ["judge"], **verify}}


def config(tmp_path: Path, trio: Trio, groups: list[dict] | None = None, **sections: Any) -> dict:
    return gateway_config(tmp_path, models(trio), groups or [group()], **sections)


def cost(model: str, prompt: str, answer_words: int) -> float:
    """What the fake upstream's usage costs: prompt words at the input price, answer words at the output's."""
    price_in, price_out = PRICES[model]
    return len(prompt.split()) * price_in + answer_words * price_out


def ask(gw: Gateway, prompt: str, model: str = "auto", **options: Any) -> tuple[str | None, httpx.Headers]:
    client = gw.openai(api_key=options.pop("api_key", "none"))
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **options)
    return raw.parse().choices[0].message.content, raw.headers


def calls(trio: Trio) -> tuple[int, int, int]:
    return tuple(u.stats()["requests"] for u in trio)  # type: ignore[return-value]


def verify_of(gw: Gateway, headers: httpx.Headers) -> tuple[dict, dict]:
    row = gw.row(headers["x-pitstop-request-id"])
    return row, (row["extra"] or {}).get("verify")


def assert_router_chose_weak(row: dict) -> None:
    assert row["router_name"] == "tier-prior"
    assert max(row["router_scores"], key=row["router_scores"].get) == "weak"



def test_agreement_serves_the_pick_after_one_verifier_call(tmp_path: Path, trio: Trio, storage_url: str) -> None:
    prompt = "Which planet is largest? [answer:B]"  # every upstream answers B
    with running_gateway(config(tmp_path, trio, storage_url=storage_url)) as gw:
        content, headers = ask(gw, prompt)
        with gw.http() as http:
            metrics = http.get("/metrics").text
        row, verify = verify_of(gw, headers)
    assert content == "B"
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("weak", "accepted")
    assert calls(trio) == (1, 1, 0)
    assert (row["model"], row["deployment"], row["status"]) == ("weak", "weak#0", "ok")
    assert_router_chose_weak(row)
    assert (row["routed_model"], row["verify_outcome"]) == ("weak", "accepted")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (len(prompt.split()), 1)
    assert row["cost_usd"] == pytest.approx(cost("weak", prompt, 1) + cost("judge", prompt, 1))
    assert verify == {"outcome": "accepted", "pick": "weak", "pick_answer": "B", "verifiers": {"judge": "B"},
                      "escalated_to": None, "errors": {},
                      "cost_usd": {"weak": pytest.approx(cost("weak", prompt, 1)),
                                   "judge": pytest.approx(cost("judge", prompt, 1))}}
    assert 'pitstop_verify_total{outcome="accepted",route_group="auto"} 1.0' in metrics


def test_disagreement_escalates_and_every_call_is_charged(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [answer:C@b] [answer:D@c]"
    raw = config(tmp_path, trio, auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw) as gw:
        key_id, secret = KeyStore(gw.storage_url).create("verified", budget_usd=1.0)
        content, headers = ask(gw, prompt, api_key=secret)
        row, verify = verify_of(gw, headers)
        total = cost("weak", prompt, 1) + cost("judge", prompt, 1) + cost("strong", prompt, 1)
        gw.flush()  # the spend goes into the key's row with the outcome rows' batch
        spent = KeyStore(gw.storage_url).get(key_id).spent_usd  # type: ignore[union-attr]
    assert content == "D"
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("strong", "escalated")
    assert calls(trio) == (1, 1, 1)
    assert (row["model"], row["deployment"]) == ("strong", "strong#0")
    assert_router_chose_weak(row)  # the decision stays the router's
    assert (row["routed_model"], row["verify_outcome"]) == ("weak", "escalated")
    assert row["cost_usd"] == pytest.approx(total)
    assert spent == pytest.approx(total)  # the budget counts every call, not only the served one
    assert verify["outcome"] == "escalated" and verify["escalated_to"] == "strong"
    assert (verify["pick_answer"], verify["verifiers"]) == ("B", {"judge": "C"})
    assert set(verify["cost_usd"]) == {"weak", "judge", "strong"}


def test_completions_are_verified_on_their_text(tmp_path: Path, trio: Trio) -> None:
    prompt = "Add 40 and 2. [answer:42] [answer:41@b]"
    with running_gateway(config(tmp_path, trio)) as gw:
        raw = gw.openai().completions.with_raw_response.create(model="auto", prompt=prompt)
        row, verify = verify_of(gw, raw.headers)
    assert raw.parse().choices[0].text == "42"  # strong answers 42 too: escalated, still 42
    assert (raw.headers["x-pitstop-model"], raw.headers["x-pitstop-verify"]) == ("strong", "escalated")
    assert calls(trio) == (1, 1, 1)
    assert (verify["pick_answer"], verify["verifiers"]) == ("42", {"judge": "41"})


def test_free_text_is_served_unchecked_without_a_verifier_call(tmp_path: Path, trio: Trio) -> None:
    prompt = "Tell me about Jupiter. [answer:B@b]"
    with running_gateway(config(tmp_path, trio)) as gw:
        content, headers = ask(gw, prompt)
        row, verify = verify_of(gw, headers)
    assert content == "from-a w1 w2 w3 w4"
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("weak", "unchecked")
    assert calls(trio) == (1, 0, 0)
    assert row["cost_usd"] == pytest.approx(cost("weak", prompt, 5))
    assert (verify["pick_answer"], verify["verifiers"], verify["escalated_to"]) == (None, {}, None)


def test_a_failing_verifier_does_not_agree(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [answer:D@c]"
    trio[1].set_fail(500)
    with running_gateway(config(tmp_path, trio)) as gw:
        content, headers = ask(gw, prompt)
        row, verify = verify_of(gw, headers)
    assert content == "D"
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("strong", "escalated")
    assert calls(trio) == (1, 1, 1)
    assert verify["verifiers"] == {"judge": None} and "injected 500" in verify["errors"]["judge"]
    assert row["cost_usd"] == pytest.approx(cost("weak", prompt, 1) + cost("strong", prompt, 1))


def test_a_failing_escalation_still_serves_the_pick(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [answer:C@b]"
    trio[2].set_fail(500)
    with running_gateway(config(tmp_path, trio)) as gw:
        content, headers = ask(gw, prompt)
        row, verify = verify_of(gw, headers)
    assert content == "B"
    assert (headers["x-pitstop-model"], headers["x-pitstop-verify"]) == ("weak", "escalation_failed")
    assert calls(trio) == (1, 1, 1)
    assert (row["model"], row["status"], row["http_status"], row["error"]) == ("weak", "ok", 200, None)
    assert "injected 500" in verify["errors"]["strong"]
    assert row["cost_usd"] == pytest.approx(cost("weak", prompt, 1) + cost("judge", prompt, 1))


def test_a_client_leaving_during_verification_cancels_it_and_is_charged_for_the_pick(tmp_path: Path,
                                                                                   trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [delay:3@b]"
    with running_gateway(config(tmp_path, trio)) as gw:
        with gw.http() as http, pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": prompt}]},
                      timeout=0.5)
        rows = wait_until(gw.rows, what="the aborted row")
        judge = gw.state.pool.by_model["judge"][0]
        assert judge.outstanding == 0  # the verifier's call was cancelled, not left to finish its 3 s
    assert [(r["status"], r["http_status"], r["model"]) for r in rows] == [("aborted", 499, "weak")]
    assert rows[0]["cost_usd"] == pytest.approx(cost("weak", prompt, 1))  # the pick's answer was paid for
    assert rows[0]["extra"]["verify"]["outcome"] is None
    assert calls(trio) == (1, 1, 0)


def test_several_choices_and_streams_with_no_hold_are_never_verified(tmp_path: Path, trio: Trio) -> None:
    prompt = "Which planet is largest? [answer:B] [answer:C@b]"
    with running_gateway(config(tmp_path, trio, [group(hold_chars=0)])) as gw:
        client = gw.openai()
        with client.chat.completions.with_streaming_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}], stream=True) as streamed:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices)
        _, several = ask(gw, prompt, n=2)
        rows = gw.rows([streamed.headers["x-pitstop-request-id"], several["x-pitstop-request-id"]])
    assert text == "B"
    for headers in (streamed.headers, several):
        assert headers["x-pitstop-model"] == "weak" and "x-pitstop-verify" not in headers
    assert calls(trio) == (2, 0, 0)
    assert [(row["extra"] or {}).get("verify") for row in rows] == [None, None]


def test_only_picks_predicted_below_the_threshold_are_verified(tmp_path: Path, trio: Trio) -> None:
    # The tier prior predicts 0.6 for weak: verified below 0.7, not below 0.5.
    prompt = "Which planet is largest? [answer:B] [answer:C@b]"
    groups = [group("strict", below=0.7), group("lenient", below=0.5)]
    with running_gateway(config(tmp_path, trio, groups)) as gw:
        _, lenient = ask(gw, prompt, model="lenient")
        assert calls(trio) == (1, 0, 0) and "x-pitstop-verify" not in lenient
        _, strict = ask(gw, prompt, model="strict")
        assert calls(trio) == (2, 1, 1) and strict["x-pitstop-verify"] == "escalated"
        # A pick that is the escalation model itself is served unverified.
        content, strongest = ask(gw, prompt, model="strict", extra_body={"cost_preference": 0})
        assert calls(trio) == (2, 1, 2) and "x-pitstop-verify" not in strongest
    assert (content, strongest["x-pitstop-model"]) == ("B", "strong")


def test_models_lists_each_groups_verify_settings(tmp_path: Path, trio: Trio) -> None:
    groups = [group("auto", escalate_to="judge", below=0.9), {"name": "plain", "models": ["weak", "strong"]},
              group("defaults")]
    with running_gateway(config(tmp_path, trio, groups)) as gw, gw.http() as http:
        listed = {m["id"]: m.get("pitstop") for m in http.get("/v1/models").json()["data"]}
    assert listed["auto"]["verify"] == {"verifiers": ["judge"], "escalate_to": "judge", "count": 1, "below": 0.9,
                                        "hold_chars": 32}
    assert listed["defaults"]["verify"] == {"verifiers": ["judge"], "escalate_to": "strong", "count": 1,
                                            "below": 1.0, "hold_chars": 32}
    assert listed["plain"]["verify"] is None


def parse_group(tmp_path: Path, verify: dict, prices: dict[str, tuple[float, float]] | None = None) -> Any:
    prices = prices or PRICES
    entries = [model_entry(name, "http://127.0.0.1:9/v1", price_in=p[0], price_out=p[1])
               for name, p in prices.items()]
    raw = gateway_config(tmp_path, entries, [{"name": "grp", "models": list(prices), "verify": verify}])
    settings = parse_settings(raw)
    return settings.verify_policy(settings.route_groups[0])


@pytest.mark.parametrize(("verify", "expected"), [
    ({"verifiers": ["ghost"]}, ["route_groups.0.verify.verifiers", "'ghost'"]),
    ({"verifiers": ["judge"], "escalate_to": "ghost"}, ["route_groups.0.verify.escalate_to", "'ghost'"]),
    ({"verifiers": []}, ["route_groups.0.verify.verifiers"]),
    ({"verifiers": ["judge"], "count": 2}, ["route_groups.0.verify", "count 2"]),
    ({"verifiers": ["judge"], "count": 0}, ["route_groups.0.verify.count"]),
    ({"verifiers": ["judge"], "below": -0.1}, ["route_groups.0.verify.below"]),
    ({"verifiers": ["judge"], "hold_chars": -1}, ["route_groups.0.verify.hold_chars"]),
    ({"verifiers": ["judge"], "escalate": "strong"}, ["route_groups.0.verify.escalate"]),
])
def test_bad_verify_config_names_the_field(tmp_path: Path, verify: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_group(tmp_path, verify)
    for part in expected:
        assert part in str(caught.value)


def test_escalate_to_defaults_to_the_groups_costliest_model(tmp_path: Path) -> None:
    assert parse_group(tmp_path, {"verifiers": ["judge"]}).escalate_to == "strong"
    # Ties on the output price go to the higher input price, then to the later listed.
    tied = {"x": (1e-6, 5e-6), "y": (2e-6, 5e-6), "z": (2e-6, 5e-6), "judge": (1e-6, 1e-6)}
    assert parse_group(tmp_path, {"verifiers": ["judge"]}, tied).escalate_to == "z"
    policy = parse_group(tmp_path, {"verifiers": ["judge", "weak"], "escalate_to": "judge", "count": 2,
                                    "below": 0.8})
    assert (policy.verifiers, policy.escalate_to, policy.count, policy.below) == (("judge", "weak"), "judge", 2, 0.8)


def test_verifiers_without_their_api_key_leave_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PITSTOP_TEST_UNSET_KEY", raising=False)
    keyless = {"model_name": "api", "litellm_params": {"model": "openai/gpt-4o",
                                                       "api_key": "os.environ/PITSTOP_TEST_UNSET_KEY"}}
    entries = [model_entry(name, "http://127.0.0.1:9/v1") for name in ("weak", "judge")]
    raw = gateway_config(tmp_path, [*entries, keyless], [
        {"name": "some", "models": ["weak", "judge"], "verify": {"verifiers": ["api", "judge"], "count": 2,
                                                                "escalate_to": "api"}},
        {"name": "none", "models": ["weak", "judge"], "verify": {"verifiers": ["api"]}}])
    settings = parse_settings(raw)
    some, none = settings.route_groups
    assert (some.verify.verifiers, some.verify.count, some.verify.escalate_to) == (["judge"], 1, None)
    assert none.verify is None


def test_escalated_requests_are_told_apart_in_the_export_the_log_job_and_retraining(tmp_path: Path,
                                                                                     trio: Trio) -> None:
    """With exploration on, an escalated row's propensity is the pick's, not the escalation model's: the
    export says so, `eval router-logs` leaves such rows out (and says why), retraining weighs them once."""
    raw = gateway_config(tmp_path, models(trio), [{**group(), "explore_epsilon": 0.2}])
    path = write_config(tmp_path / "pitstop.yaml", raw)
    prompts = {"agree": "Which is largest? [answer:B]", "disagree": "Which is largest? [answer:B] [answer:C@b]"}
    with running_gateway(raw) as gw, gw.http() as http:
        for i in range(12):
            kind = "agree" if i % 2 else "disagree"
            response = http.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": f"{prompts[kind]} ({i})"}]})
            assert response.status_code == 200, response.text
            assert http.post("/v1/feedback", json={"request_id": request_id_of(response),
                                                   "value": 1.0}).status_code == 202
        gw.flush()
    export = tmp_path / "outcomes.jsonl"
    done = run_cli("export", "outcomes", "--config", str(path), "--out", str(export))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    escalated = [r for r in rows if r["verify_outcome"] == "escalated"]
    assert escalated and all(r["model"] == "strong" and r["routed_model"] != "strong" for r in escalated)
    assert all(r["model"] == r["routed_model"] for r in rows if r["verify_outcome"] != "escalated")
    report = run_cli_here("eval", "router-logs", "--config", str(path), "--group", "auto", "--logs", str(export))
    assert report.returncode == 0, report.stderr
    judged = json.loads(report.stdout)
    assert judged["skipped"]["escalated"] == len(escalated)
    assert judged["requests"] == len(rows) - len(escalated)
    assert any("verify escalated" in w for w in judged["warnings"])
    weights = dict(zip(load_outcomes(export).column("prompt_id").to_pylist(),
                       load_outcomes(export).column("weight").to_pylist(), strict=True))
    for r in rows:
        drawn = r["verify_outcome"] != "escalated"
        assert weights[r["request_id"]] == pytest.approx(1 / r["propensity"] if drawn else 1.0)


def test_a_verifying_group_calibrates_at_the_rates_its_log_shows(tmp_path: Path, trio: Trio) -> None:
    """Every logged pick (weak) was checked and half were escalated to strong. Calibrating strong's share
    counts those escalations: 0.4 is out of reach, 0.5 (every pick weak) is the closest; and the
    requests routed since count at the same rates."""
    calibrate = {"model_share": 0.4, "model": "strong", "min_requests": 20, "interval_s": 0.3}
    with running_gateway(config(tmp_path, trio, [{**group(), "calibrate": calibrate}])) as gw:
        for i in range(20):
            outcome = ask(gw, f"Which is largest? [answer:B]{' [answer:C@b]' if i % 2 else ''} ({i})")[1]
            assert outcome["x-pitstop-verify"] == ("escalated" if i % 2 else "accepted")
        gw.flush()
        with gw.openai() as client:
            def calibrated() -> dict | None:
                listed = next(m for m in client.models.list().data if m.id == "auto").model_dump()["pitstop"]
                state = listed["calibration"]
                return state if state and state["status"] == "calibrated" else None

            state = wait_until(calibrated, what="a calibration on the logged verify outcomes")
            rates = state["verify_rates"]
            assert (rates["checked"], rates["escalated"], rates["logged"]) == ({"weak": 1.0}, {"weak": 0.5}, {"weak": 20})
            assert state["achieved"] == pytest.approx(0.5)

            def counted_since() -> dict | None:  # a recalibration (every 0.3 s) starts the tally afresh
                ask(gw, "Which is largest? [answer:B] (late)")
                state = calibrated()
                return state["since"] if state and state["since"]["requests"] else None

            since = wait_until(counted_since, what="a request counted since the calibration")
            assert since["average"] == pytest.approx(0.5)
