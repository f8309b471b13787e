"""What a request holds of its key's budget (gateway/budget_holds.py): the costliest deployment it may
reach, its prompt estimate, the most it may answer, for every answer it asks for."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers

from gateway.auth import Caller
from gateway.budget_holds import DEFAULT_MAX_OUTPUT_TOKENS, budget_hold
from gateway.config import parse_settings
from gateway.deployments import Deployment, DeploymentPool
from gateway.image_tokens import provider_image_tokens
from gateway.request_body import parse_embeddings_request, parse_proxy_request
from gateway.routing import RouteTable
from tests.gateway.image_data import TALL

MODELS = {"cheap": (1e-6, 2e-6, None), "dear": (1e-5, 3e-5, 1000), "embed": (1e-7, 0.0, None)}
KEY = Caller("key-1", budget_usd=10.0)


@pytest.fixture(scope="module")
def world() -> tuple[RouteTable, DeploymentPool]:
    entries = [{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:1/v1"},
                "model_info": {"input_cost_per_token": cost_in, "output_cost_per_token": cost_out,
                               **({"max_output_tokens": longest} if longest else {})}}
               for name, (cost_in, cost_out, longest) in MODELS.items()]
    settings = parse_settings({"model_list": entries, "route_groups": [{"name": "grp", "models": ["cheap", "dear"]}]})
    pool = DeploymentPool()
    for entry in settings.model_list:
        pool.add(Deployment(f"{entry.model_name}#0", entry.model_name, None, entry.model_info,  # type: ignore[arg-type]
                            entry.litellm_params.model))
    return RouteTable(settings), pool


def hold_usd(world: tuple[RouteTable, DeploymentPool], body: dict[str, Any], kind: str = "chat",
             caller: Caller = KEY) -> float | None:
    request = (parse_embeddings_request(body) if kind == "embedding"
               else parse_proxy_request(body, kind, Headers()))  # type: ignore[arg-type]
    hold = budget_hold(caller, request, *world, "req-1", 600.0, 3)
    return None if hold is None else hold.usd


def chat(model: str, text: str = "x" * 40, **fields: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def test_the_worst_case_of_what_the_request_may_cost(world: tuple) -> None:
    prompt = 40 // 4 + 1  # 40 characters
    assert hold_usd(world, chat("cheap", max_tokens=50)) == pytest.approx(prompt * 1e-6 + 50 * 2e-6)
    assert hold_usd(world, chat("cheap")) == pytest.approx(prompt * 1e-6 + DEFAULT_MAX_OUTPUT_TOKENS * 2e-6)
    assert hold_usd(world, chat("dear")) == pytest.approx(prompt * 1e-5 + 1000 * 3e-5)  # its max_output_tokens
    # A route group may send it to its costliest model.
    assert hold_usd(world, chat("grp", max_completion_tokens=50)) == pytest.approx(prompt * 1e-5 + 50 * 3e-5)
    assert hold_usd(world, chat("cheap", max_tokens=50, n=3)) == pytest.approx(3 * (prompt * 1e-6 + 50 * 2e-6))
    completions = {"model": "cheap", "prompt": ["x" * 20, "y" * 20], "max_tokens": 10}
    assert hold_usd(world, completions, "completion") == pytest.approx(2 * (prompt * 1e-6 + 10 * 2e-6))
    assert hold_usd(world, {"model": "embed", "input": "x" * 40}, "embedding") == pytest.approx(prompt * 1e-7)


def test_no_budget_no_hold(world: tuple) -> None:
    assert hold_usd(world, chat("cheap"), caller=Caller("key-2")) is None
    assert hold_usd(world, chat("cheap"), caller=Caller(None)) is None


def test_a_hold_is_at_its_prompts_tier_and_the_costliest_prompt_price() -> None:
    """A prompt estimated above a long-context tier's threshold holds at the tier's prices; every prompt token at
    the costliest prompt price, a 1-hour cache write's here (it may be written), the tier's input price above."""
    info = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "cache_creation_input_token_cost": 1.25e-6,
            "cache_creation_input_token_cost_above_1hr": 2e-6, "input_cost_per_token_above_1k_tokens": 4e-6,
            "output_cost_per_token_above_1k_tokens": 6e-6}
    entry = {"model_name": "long", "litellm_params": {"model": "openai/long", "api_base": "http://127.0.0.1:1/v1"},
             "model_info": info}
    settings = parse_settings({"model_list": [entry]})
    pool = DeploymentPool()
    pool.add(Deployment("long#0", "long", None, settings.model_list[0].model_info, "openai/long"))  # type: ignore[arg-type]
    world = (RouteTable(settings), pool)
    at_threshold, above = "x" * 3_996, "x" * 4_000  # estimated 1,000 and 1,001 prompt tokens
    assert hold_usd(world, chat("long", at_threshold, max_tokens=50)) == pytest.approx(1_000 * 2e-6 + 50 * 2e-6)
    assert hold_usd(world, chat("long", above, max_tokens=50)) == pytest.approx(1_001 * 4e-6 + 50 * 6e-6)


def test_a_prompts_images_are_held_as_each_deployment_counts_them() -> None:
    entries = [{"model_name": name, "litellm_params": {"model": model, "api_key": "unused"},
                "model_info": {"input_cost_per_token": cost_in, "output_cost_per_token": 0.0}}
               for name, model, cost_in in (("gpt", "openai/gpt-4o", 1e-5), ("claude", "anthropic/claude-sonnet-4-5",
                                                                              2e-5))]
    settings = parse_settings({"model_list": entries, "route_groups": [{"name": "both", "models": ["gpt", "claude"]}]})
    pool = DeploymentPool()
    for entry in settings.model_list:
        pool.add(Deployment(f"{entry.model_name}#0", entry.model_name, None, entry.model_info,  # type: ignore[arg-type]
                            entry.litellm_params.model, image_tokens=provider_image_tokens(entry.litellm_params.model)))
    world = (RouteTable(settings), pool)

    def image_chat(model: str, detail: str) -> dict:
        return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it"},
            {"type": "image_url", "image_url": {"url": TALL, "detail": detail}}]}]}

    def prompt(image_tokens: int) -> int:
        return (10 + 4 * image_tokens) // 4 + 1  # the text's 10 characters, the image's tokens at 4 each

    assert hold_usd(world, image_chat("gpt", "high")) == pytest.approx(prompt(1105) * 1e-5)  # OpenAI's 6 tiles
    assert hold_usd(world, image_chat("gpt", "low")) == pytest.approx(prompt(85) * 1e-5)
    assert hold_usd(world, image_chat("claude", "low")) == pytest.approx(prompt(28 * 56) * 2e-5)  # 784 x 1568
    assert hold_usd(world, image_chat("both", "low")) == pytest.approx(prompt(28 * 56) * 2e-5)  # the costlier
