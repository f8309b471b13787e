"""Two in-process instances of one model: a chat that names no session is resent whole each turn, and
its next turn goes back to the instance holding its prefix (cached prompt tokens there), where
least-outstanding balancing would send it to the idle one and recompute it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import gateway_config, running_gateway

SYSTEM = "You are a careful assistant who answers questions about the quick brown fox and the lazy dog. " * 30


@pytest.mark.parametrize("min_chars", [2048, 0], ids=["affinity", "off"])
def test_a_chat_without_a_session_goes_back_to_its_prefix(tmp_path: Path, min_chars: int) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    instance = {"model_name": "tiny", "litellm_params": {"model": "pitstop-local/tiny", "model_dir": str(model_dir),
                                                         "num_blocks": 256, "max_model_len": 2048}}
    config = gateway_config(tmp_path, [instance, instance], sessions={"prefix_affinity_min_chars": min_chars})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is the fox?"}]
    with running_gateway(config) as gateway, gateway.openai() as client:
        assert gateway.state is not None
        first, second = gateway.state.pool.by_model["tiny"]
        first.outstanding = 1  # busy: the first turn goes to the second instance
        turn1 = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
        first.outstanding, second.outstanding = 0, 1  # now the second is the busier one, by one request
        messages += [{"role": "assistant", "content": turn1.choices[0].message.content},
                     {"role": "user", "content": "And the dog?"}]
        turn2 = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
        second.outstanding = 0
        metrics = httpx.get(f"{gateway.url}/metrics").text
    cached = turn2.usage.prompt_tokens_details.cached_tokens
    if min_chars:
        assert cached >= turn1.usage.prompt_tokens - 16  # all of turn 1's prompt but its last block
        assert 'pitstop_prefix_affinity_total{reason="prefix"} 1.0' in metrics
        assert 'pitstop_prefix_affinity_total{reason="new"} 1.0' in metrics
    else:
        assert cached == 0 and "pitstop_prefix_affinity_total{" not in metrics
