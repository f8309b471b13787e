"""A two-turn agent session on the real tiny model over a real socket: after a flood of other
requests, the second turn finds the first turn's KV cached only when it was pinned."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from engine.build import build_engine
from engine.server.app import create_app
from tests.engine.serving import serve_in_thread

MODEL = "tiny"
BLOCK = 16


def second_turn_cached_tokens(model_dir: Path, pin_ttl_s: float | None) -> tuple[int, int]:
    # 40 blocks of 16 tokens: the flood below cycles through all of them several times.
    engine = build_engine(model_dir, num_blocks=40, block_size=BLOCK, max_model_len=320, max_num_seqs=4,
                          pin_budget_fraction=0.5)
    with serve_in_thread(create_app(engine, MODEL)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        turn1 = [(7 * i + 11) % 500 + 3 for i in range(96)]  # token ids: six full blocks
        extra = {"session_id": "agent", "ignore_eos": True}
        if pin_ttl_s is not None:
            extra["pin_ttl_s"] = pin_ttl_s
        first = client.completions.create(model=MODEL, prompt=turn1, max_tokens=4, extra_body=extra)
        for i in range(12):  # other traffic: distinct prompts, about 5 blocks each
            client.completions.create(model=MODEL, prompt=[(13 * i + t) % 500 + 3 for t in range(70)],
                                      max_tokens=8, extra_body={"ignore_eos": True})
        second = client.completions.create(model=MODEL, prompt=turn1 + [5, 6, 7, 8, 9], max_tokens=2,
                                           extra_body={"session_id": "agent", "ignore_eos": True})
        assert first.usage.prompt_tokens == 96
        return second.usage.prompt_tokens_details.cached_tokens, second.usage.prompt_tokens


@pytest.mark.parametrize("pinned", [True, False])
def test_second_turn_is_cached_only_when_pinned(tiny_model_dir: Path, pinned: bool) -> None:
    cached, prompt = second_turn_cached_tokens(tiny_model_dir, 60.0 if pinned else None)
    assert prompt == 101
    if pinned:
        assert cached == 96  # all six blocks of the first turn survived the flood
    else:
        assert cached == 0  # the flood evicted them
