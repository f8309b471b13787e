"""The semantic response cache over real sockets with the openai SDK and the mock upstream: a reworded
question served without an upstream call (whole and streamed) and its answer kept under its own key, a
different one sent upstream, the guard
refusing changed numbers and swapped words above the threshold, everything but the last user message
required to match, the request's directives, expiry, flushes, Redis shared by two gateways and Redis
going away. MiniLM loads once a test process (gateway/semantic_encoders.py)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cache_control import CACHE_HEADER
from gateway.config import ConfigError, parse_settings
from gateway.semantic_cache import SIMILARITY_HEADER
from gateway.semantic_encoders import shared_passage_encoder
from gateway.semantic_text import embedded
from tests.gateway.harness import gateway_config, model_entry, running_gateway
from tests.gateway.test_gateway_keys import MASTER
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess
from tests.throwaway_redis import ThrowawayRedis

THRESHOLD = 0.95  # the default
KEPT, REWORDED = "What is the capital of France?", "what's the capital of france"
OTHER = "What is the capital of Germany?"
# Above the threshold by their embeddings, refused by the guard: a number changed, the same words swapped.
NUMBERS = ("In a class of 30 students, 12 play football and the rest play basketball. How many play basketball?",
           "In a class of 30 students, 13 play football and the rest play basketball. How many play basketball?")
SWAPPED = ("Convert 100 degrees Fahrenheit to Celsius.", "Convert 100 degrees Celsius to Fahrenheit.")


def similarity(a: str, b: str) -> float:
    vectors = shared_passage_encoder().encode([embedded(a), embedded(b)], False)
    return float(vectors[0] @ vectors[1])


def semantic_config(tmp_path: Path, upstream: UpstreamProcess, semantic: dict | None = None, **cache: object) -> dict:
    models = [model_entry("up", upstream.api_base), model_entry("up2", upstream.api_base)]
    return gateway_config(tmp_path, models, cache={**cache, "semantic": semantic or {}})


def chat(text: str, system: str = "Answer briefly.", **fields: object) -> dict:
    return {"model": "up", "temperature": 0, **fields,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}


class Asker:
    """Requests through one client, each told as `<x-pitstop-cache>/<upstream calls it made>`."""

    def __init__(self, http: httpx.Client, upstream: UpstreamProcess, headers: dict | None = None) -> None:
        self.http, self.upstream, self.headers = http, upstream, headers or {}
        self.last: httpx.Response | None = None

    def __call__(self, body: dict, path: str = "/v1/chat/completions", **headers: str) -> str:
        before = self.upstream.stats()["requests"]
        self.last = self.http.post(path, json=body, headers={**self.headers, **headers})
        assert self.last.status_code == 200, self.last.text
        return f"{self.last.headers.get(CACHE_HEADER, '-')}/{self.upstream.stats()['requests'] - before}"


@pytest.fixture
def upstream(upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> UpstreamProcess:
    return upstreams[0]


def test_the_pairs_are_where_the_tests_need_them() -> None:
    assert similarity(KEPT, REWORDED) >= THRESHOLD + 0.03
    assert similarity(KEPT, OTHER) < THRESHOLD - 0.3
    assert similarity(*NUMBERS) >= THRESHOLD and similarity(*SWAPPED) >= THRESHOLD


def test_a_reworded_question_is_served_the_kept_answer_whole_and_streamed(upstream: UpstreamProcess,
                                                                          tmp_path: Path) -> None:
    with running_gateway(semantic_config(tmp_path, upstream)) as gw, gw.http() as http:
        ask = Asker(http, upstream)
        assert ask(chat(KEPT)) == "miss/1"
        kept = ask.last.json()
        assert ask(chat(REWORDED)) == "semantic-hit/0"
        hit = ask.last
        assert hit.json()["id"] == kept["id"] and hit.json()["choices"] == kept["choices"]  # the kept answer
        assert float(hit.headers[SIMILARITY_HEADER]) == pytest.approx(similarity(KEPT, REWORDED), abs=1e-3)
        assert "age" in hit.headers
        assert ask(chat(REWORDED)) == "hit/0"  # kept under its own key too: asked again, an exact hit
        assert ask.last.json()["id"] == kept["id"]

        client = gw.openai()
        with client.chat.completions.stream(**chat(REWORDED.capitalize())) as stream:  # a key never asked
            final = stream.get_final_completion()
        assert final.choices[0].message.content == kept["choices"][0]["message"]["content"]
        assert upstream.stats()["requests"] == 1
        assert ask(chat(OTHER)) == "miss/1"  # another question, far below the threshold

        row = gw.row(hit.headers["x-pitstop-request-id"])
        assert row["cache_hit"] is True and row["cost_usd"] == 0 and row["deployment"] is None
        assert row["extra"]["cache"] == "semantic-hit" and row["extra"]["cache_similarity"] > THRESHOLD
        metrics = http.get("/metrics").text
        assert 'pitstop_semantic_cache_total{outcome="hit"} 2.0' in metrics
        assert 'pitstop_response_cache_total{outcome="semantic_hit"} 2.0' in metrics
        assert 'pitstop_response_cache_total{outcome="copied"} 2.0' in metrics


def test_the_guard_refuses_changed_numbers_and_swapped_words_above_the_threshold(upstream: UpstreamProcess,
                                                                               tmp_path: Path) -> None:
    with running_gateway(semantic_config(tmp_path, upstream)) as gw, gw.http() as http:
        ask = Asker(http, upstream)
        for kept, near in (NUMBERS, SWAPPED):
            assert ask(chat(kept)) == "miss/1"
            assert ask(chat(near)) == "miss/1"
            assert ask(chat(kept.lower())) == "semantic-hit/0"  # the same literals: served
        assert 'pitstop_semantic_cache_total{outcome="guarded"} 2.0' in http.get("/metrics").text


def test_everything_but_the_last_user_message_must_match(upstream: UpstreamProcess, tmp_path: Path) -> None:
    raw = semantic_config(tmp_path, upstream)
    raw["auth"] = {"require_keys": True, "master_key": MASTER}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with running_gateway(raw) as gw, gw.http() as http:
        master = {"authorization": f"Bearer {MASTER}"}
        alice, bob = (http.post("/v1/keys", json={"name": name}, headers=master).json()["secret"]
                      for name in ("alice", "bob"))
        ask = Asker(http, upstream, {"authorization": f"Bearer {alice}"})
        assert ask(chat(KEPT)) == "miss/1"
        assert ask(chat(REWORDED, max_tokens=5)) == "miss/1"
        assert ask(chat(REWORDED, temperature=0, seed=3)) == "miss/1"
        assert ask(chat(REWORDED, tools=tools)) == "miss/1"
        assert ask(chat(REWORDED, system="Answer at length.")) == "miss/1"
        assert ask(chat(REWORDED, model="up2")) == "miss/1"
        earlier = {"model": "up", "temperature": 0, "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": REWORDED}]}
        assert ask(earlier) == "miss/1"
        assert ask(chat(REWORDED), authorization=f"Bearer {bob}") == "miss/1"  # another key's answers
        assert ask(chat(REWORDED)) == "semantic-hit/0"
        # Not answer-shaping: the key of the semantic hit before, whose answer was kept under it.
        assert ask(chat(REWORDED, user="someone", metadata={"run": "2"})) == "hit/0"


def test_directives_expiry_and_flush(upstream: UpstreamProcess, tmp_path: Path) -> None:
    raw = semantic_config(tmp_path, upstream)
    raw["auth"] = {"require_keys": True, "master_key": MASTER}
    with running_gateway(raw) as gw, gw.http() as http:
        ask = Asker(http, upstream, {"authorization": f"Bearer {MASTER}"})
        assert ask(chat(KEPT, temperature=0.7)) == "-/1"  # sampled: no cache at all, as for the exact one
        assert ask(chat(REWORDED, temperature=0.7, cache={"use-cache": True})) == "miss/1"  # nothing was kept

        assert ask(chat(KEPT, seed=1), **{CACHE_HEADER: "no-store"}) == "miss/1"
        assert ask(chat(REWORDED, seed=1)) == "miss/1"  # the first was not kept; this one is
        assert ask(chat(KEPT, seed=1), **{CACHE_HEADER: "no-cache"}) == "miss/1"  # asked afresh
        assert ask(chat(KEPT, seed=1), **{CACHE_HEADER: "s-maxage=3600"}) == "hit/0"  # and kept again
        time.sleep(0.05)
        assert ask(chat(KEPT.upper(), seed=1), **{CACHE_HEADER: "s-maxage=0.01"}) == "miss/1"  # too old

        assert ask(chat(KEPT, seed=2), **{CACHE_HEADER: "ttl=0.3"}) == "miss/1"
        assert ask(chat(REWORDED, seed=2)) == "semantic-hit/0"
        time.sleep(0.5)
        assert ask(chat(REWORDED, seed=2), **{CACHE_HEADER: "no-store"}) == "miss/1"

        assert ask(chat(KEPT, seed=3)) == "miss/1"
        flushed = http.delete("/v1/cache", params={"model": "up2"}, headers=ask.headers).json()
        assert flushed["deleted"] == 0 and flushed["semantic_deleted"] == 0
        assert ask(chat(REWORDED, seed=3)) == "semantic-hit/0"
        flushed = http.delete("/v1/cache", params={"model": "up"}, headers=ask.headers).json()
        assert flushed["semantic_deleted"] >= 1
        assert ask(chat(REWORDED, seed=3)) == "miss/1"


def test_completions_and_the_responses_api(upstream: UpstreamProcess, tmp_path: Path) -> None:
    with running_gateway(semantic_config(tmp_path, upstream)) as gw, gw.http() as http:
        ask = Asker(http, upstream)
        completion = {"model": "up", "temperature": 0, "max_tokens": 8}
        assert ask({**completion, "prompt": KEPT}, "/v1/completions") == "miss/1"
        assert ask({**completion, "prompt": REWORDED}, "/v1/completions") == "semantic-hit/0"
        assert ask({**completion, "prompt": REWORDED, "echo": True}, "/v1/completions") == "miss/1"  # holds its prompt

        client = gw.openai()
        first = client.responses.with_raw_response.create(model="up", input=KEPT, temperature=0)
        again = client.responses.with_raw_response.create(model="up", input=REWORDED, temperature=0)
        assert (first.headers[CACHE_HEADER], again.headers[CACHE_HEADER]) == ("miss", "semantic-hit")
        assert again.parse().output_text == first.parse().output_text
        assert upstream.stats()["requests"] == 3


def test_without_a_semantic_section_nothing_is_compared(upstream: UpstreamProcess, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:
        raise AssertionError("the semantic cache ran without cache.semantic")

    monkeypatch.setattr("gateway.semantic_cache.compared_part", never)
    monkeypatch.setattr("gateway.semantic_encoders.MiniLMText.encode", never)
    raw = gateway_config(tmp_path, [model_entry("up", upstream.api_base)], cache={})
    with running_gateway(raw) as gw, gw.http() as http:
        assert gw.state is not None and gw.state.cache is not None and gw.state.cache.semantic is None
        ask = Asker(http, upstream)
        assert [ask(chat(KEPT)), ask(chat(REWORDED)), ask(chat(KEPT))] == ["miss/1", "miss/1", "hit/0"]
        assert SIMILARITY_HEADER not in ask.last.headers
        assert "pitstop_semantic" not in http.get("/metrics").text
        assert "semantic_deleted" not in http.delete("/v1/cache").json()


@pytest.mark.parametrize(("semantic", "message"), [
    ({"similarity_threshold": 0}, "cache.semantic.similarity_threshold"),
    ({"similarity_threshold": 1.5}, "cache.semantic.similarity_threshold"),
    ({"encoder": "nope"}, "cache.semantic.encoder: 'nope' is neither"),
    ({"encoder": "up"}, "cache.semantic.encoder: 'up' is neither"),  # a chat model
    ({"max_entries": 0}, "cache.semantic.max_entries"),
    ({"max_entries": 100, "max_total_entries": 10}, "max_total_entries (10) must be at least max_entries (100)"),
    ({"threshold": 0.9}, "cache.semantic.threshold: Extra inputs are not permitted"),
])
def test_bad_semantic_config_is_refused_naming_the_field(tmp_path: Path, semantic: dict, message: str) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", "http://127.0.0.1:9/v1")], cache={"semantic": semantic})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_settings(raw)


def test_an_embeddings_model_as_the_encoder(upstream: UpstreamProcess, tmp_path: Path) -> None:
    embed = model_entry("embed", upstream.api_base, provider="hosted_vllm", transport="auto")
    embed["model_info"]["mode"] = "embedding"
    raw = gateway_config(tmp_path, [model_entry("up", upstream.api_base), embed],
                         cache={"semantic": {"encoder": "embed", "similarity_threshold": 0.99}})
    with running_gateway(raw) as gw, gw.http() as http:
        ask = Asker(http, upstream)
        # The mock embeds a text by its word count and first letter: the same for these two.
        assert ask(chat("Tell me a joke")) == "miss/2"  # the chat, and the embeddings call
        assert ask(chat("Tell me some joke")) == "semantic-hit/1"  # its embeddings call only
        assert upstream.stats()["bodies"][-1] == {"model": "embed", "input": ["tell me some joke"]}
        assert ask(chat("tell me a joke!")) == "semantic-hit/0"  # its text embedded before: kept by the cache
        rows = [r for r in gw.rows() if r["endpoint"] == "embedding"]
        assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)  # each its own row
        assert [r["cache_hit"] for r in rows] == [False, False, True]


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = ThrowawayRedis()
    server.start()
    yield server
    server.kill()


@needs_redis
def test_two_gateways_share_the_index_through_redis(upstream: UpstreamProcess, tmp_path: Path) -> None:
    raw = semantic_config(tmp_path, upstream, backend="redis")
    raw["redis_url"] = REDIS_URL
    other = {**raw, "storage": {"url": f"sqlite:///{tmp_path / 'b.db'}", "spool_path": None}}
    system = f"Answer briefly. {uuid.uuid4().hex}"  # a bucket no earlier run on this Redis wrote to
    with running_gateway(raw) as a, running_gateway(other) as b, a.http() as http_a, b.http() as http_b:
        ask_a, ask_b = Asker(http_a, upstream), Asker(http_b, upstream)
        assert ask_b(chat(OTHER, system)) == "miss/1"  # b's copy of the bucket: one entry
        assert ask_a(chat(KEPT, system)) == "miss/1"
        assert ask_b(chat(REWORDED, system)) == "semantic-hit/0"  # b reads what a wrote since
        assert ask_b.last.json()["id"] == ask_a.last.json()["id"]
        assert ask_a(chat(REWORDED, system)) == "hit/0"  # the answer b kept under its key, in the shared store
        assert ask_a(chat(REWORDED.capitalize(), system)) == "semantic-hit/0"
        assert ask_b(chat(SWAPPED[0], system)) == "miss/1"


def test_redis_going_away_costs_only_the_cache(upstream: UpstreamProcess, tmp_path: Path,
                                                throwaway_redis: ThrowawayRedis) -> None:
    raw = semantic_config(tmp_path, upstream, backend="redis")
    raw |= {"redis_url": throwaway_redis.url, "limits": {"fail_open": True}}
    with running_gateway(raw) as gw, gw.http() as http:
        ask = Asker(http, upstream)
        assert ask(chat(KEPT)) == "miss/1"
        assert ask(chat(REWORDED)) == "semantic-hit/0"
        throwaway_redis.kill()
        assert [ask(chat(REWORDED)) for _ in range(3)] == ["miss/1"] * 3  # answered by the upstream
        assert 'pitstop_response_cache_total{outcome="error"}' in http.get("/metrics").text
        # Its coming back is the exact cache's store's (test_gateway_response_cache.py waits it out).


def test_the_hand_written_pairs_file_is_well_formed() -> None:
    groups = json.loads((Path(__file__).parent / "semantic_paraphrases.json").read_text())["groups"]
    kinds = {"format", "wording", "rephrase", "number", "quote", "code", "entity", "antonym", "role", "aspect"}
    assert len(groups) >= 40
    for group in groups:
        assert group["q"] and group["same"] and group["different"]
        assert {item["kind"] for item in group["same"] + group["different"]} <= kinds
