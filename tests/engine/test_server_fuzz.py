"""Fuzz `pitstop engine serve`'s API with hypothesis: near-valid generation requests whose fields take
any JSON value (extreme numbers included), and session pin calls with any TTL. Whatever the body, the
answer is below 500, and the engine is still alive for the next request: one request must never take
the step loop down (a pin 1e308 s long once did, and every later request got 503)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.server.app import create_app
from tests.engine.serving import SlowRunner, serve_in_thread
from tests.engine.test_server_errors import MODEL, fake_engine

FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

extreme = st.sampled_from([0, -1, 1e308, -1e308, 1e-300, 2**63, -(2**63), 2**64 - 1, 86_400, 86_401])
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | extreme | st.text(max_size=8)
values = extreme | st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=6)
FIELDS = ["max_tokens", "temperature", "top_p", "seed", "priority", "pin_ttl_s", "rank_score", "program_start",
          "in_program", "stop", "stop_token_ids", "ignore_eos", "stream", "session_id", "n"]


@st.composite
def generation(draw: st.DrawFn) -> tuple[str, dict]:
    chat = draw(st.booleans())
    body: dict = {"model": MODEL, "max_tokens": 2, "session_id": draw(st.sampled_from(["s1", "s2", None]))}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hello"}
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        body[name] = draw(values)
    return ("/v1/chat/completions" if chat else "/v1/completions"), body


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(create_app(fake_engine(SlowRunner(step_s=0.001)), MODEL)) as address:
        yield address


def alive(http: httpx.Client) -> None:
    assert http.get("/v1/engine/stats").status_code == 200, "the engine died"


@FUZZ
@given(request=generation())
@example(request=("/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 2, "session_id": "s1",
                                      "pin_ttl_s": 1e308}))
def test_fuzz_generation_never_fails_the_engine(url: str, request: tuple[str, dict]) -> None:
    path, body = request
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code < 500, response.text[:300]
        alive(http)


@settings(FUZZ, max_examples=60)
@given(action=st.sampled_from(["pin", "extend"]), ttl=values)
def test_fuzz_pin_calls_never_fail_the_engine(url: str, action: str, ttl: object) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        made = http.post("/v1/completions", json={"model": MODEL, "prompt": "hello there", "max_tokens": 2,
                                                  "session_id": "pinned"})
        assert made.status_code == 200, made.text
        response = http.post(f"/v1/engine/sessions/pinned/{action}", content=json.dumps({"ttl_s": ttl}),
                             headers={"content-type": "application/json"})
        assert response.status_code < 500, response.text[:300]
        alive(http)
