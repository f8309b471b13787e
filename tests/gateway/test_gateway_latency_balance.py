"""Latency-aware balancing over real sockets (`server.routing_strategy: latency`, gateway/latency_balance.py):
a model with two deployments, the first listed 0.3 s slower to answer. Least outstanding requests sends
every request of a sequential client to the first; the latency strategy measures both once and then keeps
to the fast one, for whole answers and streams alike, sends the overflow of a burst to the slow one, and
a bad config value is an error naming the field."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import httpx
import pytest

from gateway.config import parse_settings
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

SLOW = "[delay:0.3@a]"  # a, listed first, answers every request of these tests 0.3 s late


def gateway_on(tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], strategy: str | None) -> dict:
    a, b = upstreams
    server = {"allowed_fails": 1000} | ({"routing_strategy": strategy} if strategy else {})
    return gateway_config(tmp_path, [model_entry("m", a.api_base), model_entry("m", b.api_base)], server=server)


def served_by(gateway: Gateway, text: str, stream: bool = False) -> str:
    """Which instance answered (an answer's first word names it)."""
    with gateway.openai() as client:
        messages = [{"role": "user", "content": text}]
        if stream:
            chunks = client.chat.completions.create(model="m", messages=messages, stream=True)  # type: ignore[arg-type]
            answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(model="m", messages=messages).choices[0].message.content or ""  # type: ignore[arg-type]
    return answer.split()[0].removeprefix("from-")


@pytest.mark.parametrize("stream", [False, True])
def test_a_sequential_client_is_kept_on_the_fast_deployment(tmp_path: Path, upstreams: tuple, stream: bool) -> None:
    with running_gateway(gateway_on(tmp_path / "plain", upstreams, None)) as gateway:
        plain = [served_by(gateway, f"hi {SLOW}", stream) for _ in range(4)]
    assert plain == ["a"] * 4  # nothing in flight: least outstanding takes the first listed every time
    with running_gateway(gateway_on(tmp_path / "latency", upstreams, "latency")) as gateway:
        balanced = [served_by(gateway, f"hi {SLOW}", stream) for _ in range(8)]
        assert gateway.state is not None
        learnt = {name: round(value, 3) for name, value in gateway.state.pool.balancer.report().items()}
        scraped = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    assert balanced[:2] == ["a", "b"] and balanced[2:] == ["b"] * 6  # each measured once, then the fast one
    measure = "stream" if stream else "whole"
    slow, fast = learnt[f"m#0/{measure}"], learnt[f"m#1/{measure}"]
    assert slow > 3 * fast, learnt
    on_metrics = {m.group(1): float(m.group(2)) for m in re.finditer(
        rf'^pitstop_deployment_latency_seconds\{{deployment="(m#\d)",measure="{measure}"\}} (\S+)$', scraped, re.M)}
    assert on_metrics.keys() == {"m#0", "m#1"} and on_metrics["m#0"] > 3 * on_metrics["m#1"], on_metrics


def test_a_burst_overflows_to_the_slow_deployment(tmp_path: Path, upstreams: tuple) -> None:
    both = f"{SLOW} [delay:0.05@b]"  # a 7x slower than b
    with running_gateway(gateway_on(tmp_path, upstreams, "latency")) as gateway:
        assert [served_by(gateway, f"warm {both}") for _ in range(2)] == ["a", "b"]
        # 24 at once: b's expected wait grows with its requests in flight, past a's once it has 7 or so.
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            served = list(pool.map(lambda k: served_by(gateway, f"burst {k} {both}"), range(24)))
    assert served.count("b") > served.count("a") > 0, served


def test_an_unknown_strategy_is_a_config_error(tmp_path: Path, upstreams: tuple) -> None:
    with pytest.raises(ValueError, match="server.routing_strategy"):
        parse_settings(gateway_on(tmp_path, upstreams, "fastest"))
