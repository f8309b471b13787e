"""The hedging policy without HTTP (gateway/hedging.py): the latency window's quantile, the adaptive and
fixed delays, when a request is not hedged, the budget; and the race of calls on fake deployments: who
wins, what is cancelled and released, retries inside the race, the counts and the row's report."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from gateway.backends.base import Backend, BackendError
from gateway.config import ConfigError, parse_settings
from gateway.deployments import Deployment
from gateway.hedging import HedgeBudget, HedgePolicy, LatencyWindow, Race
from gateway.hedging_config import HedgingConfig
from gateway.model_list_config import ModelInfo


def policy(**config: Any) -> HedgePolicy:
    return HedgePolicy(HedgingConfig(enabled=True, **config), CollectorRegistry())


def counted(hedging: HedgePolicy, model: str = "m") -> dict[str, float]:
    return {sample.labels["outcome"]: sample.value for metric in hedging.hedges.collect()
            for sample in metric.samples if sample.name.endswith("_total") and sample.labels["model"] == model}


# ---- the policy ---------------------------------------------------------------------------------


def test_the_window_keeps_the_last_samples_and_its_quantile_is_a_nearest_rank() -> None:
    window = LatencyWindow(5)
    for seconds in (9.0, 1.0, 2.0, 3.0, 4.0, 5.0):  # 9.0 has left the window
        window.add(seconds)
    assert len(window) == 5 and window.quantile(0.95) == 5.0 and window.quantile(0.5) == 3.0
    assert window.quantile(0.2) == 1.0 and window.quantile(0.21) == 2.0


def test_the_adaptive_delay_waits_for_enough_samples_then_takes_the_quantile_above_its_floor() -> None:
    hedging = policy(min_samples=20, min_delay_s=0.05, quantile=0.95)
    for _ in range(19):
        hedging.observe("m", False, 0.2)
    assert hedging.delay_s("m", False, None, ready=2) is None  # 19 samples: not yet
    hedging.observe("m", False, 3.0)  # the 20th, the slow one: the 95th percentile is the 19th of 20
    assert hedging.delay_s("m", False, None, ready=2) == 0.2
    assert hedging.delay_s("m", True, None, ready=2) is None  # streams keep their own window
    quick = policy(min_samples=3, min_delay_s=0.05)
    for _ in range(3):
        quick.observe("m", True, 0.001)
    assert quick.delay_s("m", True, None, ready=2) == 0.05  # the floor


def test_a_fixed_delay_overrides_the_window() -> None:
    hedging = policy(delay_s=0.7)
    assert hedging.delay_s("m", False, None, ready=2) == 0.7  # no samples needed
    for _ in range(30):
        hedging.observe("m", False, 0.1)
    assert hedging.delay_s("m", True, None, ready=3) == 0.7


def test_no_hedge_for_a_preferred_deployment_one_ready_deployment_or_a_model_not_listed() -> None:
    hedging = policy(delay_s=0.5, models=["m"])
    assert hedging.delay_s("m", False, "m#0", ready=2) is None  # its KV lives there
    assert hedging.delay_s("m", False, None, ready=1) is None
    assert hedging.delay_s("other", False, None, ready=2) is None
    hedging.observe("other", False, 1.0)
    assert ("other", False) not in hedging._windows  # nor a window kept for it


def test_the_budget_allows_a_burst_then_a_share_of_the_requests() -> None:
    budget = HedgeBudget(share=0.1, burst=2)
    assert budget.spend() and budget.spend() and not budget.spend()
    for _ in range(9):
        budget.earn()
    assert not budget.spend()  # 0.9 of a token
    budget.earn()
    assert budget.spend()  # the tenth request's: 0.1 ten times is a whole token, rounding aside
    for _ in range(1000):
        budget.earn()
    assert budget.tokens == 2.0  # never more than the burst


def test_every_request_of_the_model_fills_its_budget_hedged_or_not() -> None:
    hedging = policy(delay_s=0.5, max_extra_share=0.5, burst=1)
    assert hedging.spend("m") and not hedging.spend("m")
    hedging.delay_s("m", False, "m#0", ready=2)  # preferred: not hedged, but a request of the model
    assert not hedging.spend("m")
    hedging.delay_s("m", True, None, ready=2)
    assert hedging.spend("m")


@pytest.mark.parametrize(("section", "message"), [
    ({"quantile": 1.0}, "hedging.quantile: Input should be less than 1"),
    ({"delay_s": 0}, "hedging.delay_s: Input should be greater than 0"),
    ({"max_extra_share": 1.5}, "hedging.max_extra_share: Input should be less than or equal to 1"),
    ({"max_hedges": 0}, "hedging.max_hedges: Input should be greater than or equal to 1"),
    ({"min_samples": 50, "window": 20}, "window (20) must hold min_samples (50)"),
    ({"delay": 0.5}, "hedging.delay: Extra inputs are not permitted"),
    ({"models": []}, "hedging.models: List should have at least 1 item"),
    ({"models": ["nope"]}, "hedging.models: 'nope' is not a chat model_name of model_list"),
    ({"models": ["vectors"]}, "hedging.models: 'vectors' is not a chat model_name of model_list"),
])
def test_config_errors_name_the_field(section: dict, message: str) -> None:
    models = [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/m", "api_base": "http://x/v1"}},
              {"model_name": "vectors", "litellm_params": {"model": "hosted_vllm/v", "api_base": "http://x/v1"},
               "model_info": {"mode": "embedding"}}]
    with pytest.raises(ConfigError) as raised:
        parse_settings({"model_list": models, "hedging": {"enabled": True, **section}})
    assert message in str(raised.value)


def test_off_by_default() -> None:
    settings = parse_settings({"model_list": [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/m"}}]})
    assert settings.hedging.enabled is False and HedgePolicy.build(settings.hedging) is None


# ---- the race -----------------------------------------------------------------------------------


PROMPT_TOKENS, PRICE_IN = 100, 1e-6  # a cancelled call costs its prompt: 1e-4 USD


def deployment(name: str) -> Deployment:
    return Deployment(name, "m", cast(Backend, None), ModelInfo(input_cost_per_token=PRICE_IN), "hosted_vllm/m")


Behaviour = float | BackendError | tuple[float, BackendError] | None


class Upstreams:
    """Fake calls: each deployment answers after its delay (None: never), fails with its error at once or
    after a delay, and counts the calls holding a slot, so a leak shows."""

    def __init__(self, **behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.deployments = [deployment(name) for name in behaviour]
        self.holding: set[str] = set()
        self.cancelled: list[str] = []
        self.started: list[tuple[str, int, float | None]] = []
        self.tried: set[str] = set()  # as the dispatcher's: a call adds its deployment as it starts

    async def start(self, target: Deployment, attempt: int, last: BackendError | None,
                    hedged_after_s: float | None) -> str:
        self.tried.add(target.name)
        self.started.append((target.name, attempt, hedged_after_s))
        self.holding.add(target.name)
        try:
            outcome = self.behaviour[target.name]
            if isinstance(outcome, tuple):
                await asyncio.sleep(outcome[0])
                outcome = outcome[1]
            if isinstance(outcome, BackendError):
                raise outcome
            await (asyncio.Event().wait() if outcome is None else asyncio.sleep(outcome))
            return f"from {target.name}"
        except asyncio.CancelledError:
            self.cancelled.append(target.name)
            raise
        finally:
            self.holding.discard(target.name)

    def race(self, hedging: HedgePolicy, delay_s: float = 0.02, retries: int = 2) -> Race[str]:
        tried = self.tried

        def next_deployment(last: BackendError | None) -> Deployment:
            left = [d for d in self.deployments if d.name not in tried]
            if not left:
                raise last or BackendError(503, "none left", retryable=False)
            tried.add(left[0].name)
            return left[0]

        def hedge_deployment(asked: set[str]) -> Deployment | None:
            return next((d for d in self.deployments if d.name not in tried | asked), None)

        async def drop(answer: str) -> None:
            pass

        return Race(hedging, "m", False, delay_s, retries, self.start, drop, next_deployment, hedge_deployment,
                    prompt_tokens=PROMPT_TOKENS)


def fail(status: int = 503) -> BackendError:
    return BackendError(status, f"injected {status}", retryable=status >= 500)


def test_a_slow_first_call_is_hedged_and_the_hedge_wins() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=None, b=0.0)
    won = asyncio.run(up.race(hedging).run())
    assert won.result == "from b" and won.deployment.name == "b" and won.attempts == 1
    assert up.started == [("a", 1, None), ("b", 2, 0.02)]
    assert up.cancelled == ["a"] and not up.holding
    assert won.hedge == {"delay_s": 0.02, "asked": ["a", "b"], "hedges": 1, "won": "b", "cancelled": ["a"],
                         "failed": [], "cancelled_cost_usd": 1e-4}
    assert counted(hedging) == {"won": 1.0}
    assert len(hedging._windows[("m", False)]) == 2  # the winner's latency, and the loser's wait past the delay


def test_an_answer_before_the_delay_sends_no_hedge() -> None:
    hedging, up = policy(delay_s=5.0), Upstreams(a=0.0, b=0.0)
    won = asyncio.run(up.race(hedging).run())
    assert won.result == "from a" and won.hedge is None and [s[0] for s in up.started] == ["a"]
    assert counted(hedging) == {}


def test_the_first_call_answering_after_the_hedge_went_wins_and_the_hedge_is_lost() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=0.1, b=None)
    won = asyncio.run(up.race(hedging).run())
    assert won.result == "from a" and up.cancelled == ["b"] and not up.holding
    assert won.hedge is not None and won.hedge["cancelled"] == ["b"] and "skipped" not in won.hedge
    assert counted(hedging) == {"lost": 1.0}


def test_a_failure_before_the_delay_is_a_plain_retry() -> None:
    hedging, up = policy(delay_s=5.0), Upstreams(a=fail(), b=0.0)
    won = asyncio.run(up.race(hedging, retries=1).run())
    assert won.result == "from b" and won.attempts == 2 and won.hedge is None
    assert up.started == [("a", 1, None), ("b", 2, None)]


def test_a_failure_while_the_hedge_is_in_flight_leaves_it_running_as_the_retry() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=(0.05, fail()), b=0.1)
    won = asyncio.run(up.race(hedging, retries=0).run())  # no retry left, but the hedge is already out
    assert won.result == "from b" and won.attempts == 2 and not up.holding and not up.cancelled
    assert won.hedge is not None and won.hedge["failed"] == ["a"] and won.hedge["won"] == "b"
    assert counted(hedging) == {"won": 1.0}


def test_a_failing_hedge_leaves_the_first_call_running() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=0.08, b=fail())
    won = asyncio.run(up.race(hedging, retries=0).run())
    assert won.result == "from a" and won.attempts == 2 and not up.holding
    assert won.hedge is not None and won.hedge["failed"] == ["b"] and won.hedge["won"] == "a"
    assert counted(hedging) == {"failed": 1.0}


@pytest.mark.parametrize("retries", [1, 2])
def test_when_every_call_fails_the_last_error_is_raised(retries: int) -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=(0.05, fail(500)), b=fail(502))
    with pytest.raises(BackendError) as raised:
        asyncio.run(up.race(hedging, retries=retries).run())
    assert raised.value.status == 500 and not up.holding  # a's, the last to fail
    assert [s[0] for s in up.started] == ["a", "b"] and counted(hedging) == {"failed": 1.0}
    assert raised.value.hedge is not None  # the failed request's row says how its race went
    assert raised.value.hedge["won"] is None and raised.value.hedge["failed"] == ["a", "b"][:len(up.started)]


def test_a_client_error_ends_the_race_and_cancels_the_hedge() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=(0.05, fail(400)), b=None)
    with pytest.raises(BackendError) as raised:
        asyncio.run(up.race(hedging).run())
    assert raised.value.status == 400 and up.cancelled == ["b"] and not up.holding
    assert counted(hedging) == {"cancelled": 1.0}


def test_a_request_cancelled_mid_race_cancels_every_call_and_holds_nothing() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=None, b=None)

    async def client_leaves() -> None:
        task = asyncio.create_task(up.race(hedging).run())
        while len(up.started) < 2:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]  # none leaked

    asyncio.run(client_leaves())
    assert sorted(up.cancelled) == ["a", "b"] and not up.holding
    assert counted(hedging) == {"cancelled": 1.0}


def test_max_hedges_and_the_budget_bound_the_extra_calls() -> None:
    hedging, up = policy(delay_s=0.02, max_hedges=2), Upstreams(a=None, b=None, c=0.0)
    won = asyncio.run(up.race(hedging).run())
    assert won.result == "from c" and [s[2] for s in up.started] == [None, 0.02, 0.02]
    assert sorted(up.cancelled) == ["a", "b"] and counted(hedging) == {"won": 1.0, "lost": 1.0}

    spent, up = policy(delay_s=0.02, burst=1, max_extra_share=0.01), Upstreams(a=0.1, b=0.0)
    assert spent.spend("m")  # the one token gone
    won = asyncio.run(up.race(spent).run())
    assert won.result == "from a" and [s[0] for s in up.started] == ["a"]
    assert won.hedge == {"delay_s": 0.02, "asked": ["a"], "hedges": 0, "won": "a", "cancelled": [], "failed": [],
                         "skipped": "budget"}
    assert counted(spent) == {"budget": 1.0}


def test_no_hedge_without_a_deployment_left() -> None:
    hedging, up = policy(delay_s=0.02), Upstreams(a=0.08)
    won = asyncio.run(up.race(hedging).run())
    assert won.result == "from a" and won.hedge is not None and won.hedge["skipped"] == "no_deployment"
    assert counted(hedging) == {"no_deployment": 1.0}


def test_a_hedge_the_budget_refused_leaves_its_deployment_for_a_retry() -> None:
    spent, up = policy(delay_s=0.02, burst=1, max_extra_share=0.01), Upstreams(a=(0.05, fail()), b=0.0)
    assert spent.spend("m")
    won = asyncio.run(up.race(spent, retries=1).run())
    assert won.result == "from b" and won.attempts == 2 and up.started == [("a", 1, None), ("b", 2, None)]
    assert won.hedge is not None and won.hedge["skipped"] == "budget" and won.hedge["failed"] == ["a"]
