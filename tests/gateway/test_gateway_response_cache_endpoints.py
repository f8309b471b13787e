"""The response cache beyond chat completions, over real sockets: embeddings kept per input (only new
inputs go upstream), the Responses and Messages APIs cached by header, a batch run again answered from
the cache, and its own endpoint: the master key's flush of `/v1/cache`, per model or whole, in memory
and on Redis for every replica (a model pointed at another upstream model starts afresh)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx

from gateway.cache_control import CACHE_HEADER
from tests.gateway.harness import gateway_config, model_entry, request_id_of, running_gateway
from tests.gateway.response_cache_helpers import cached_config, chat, fresh
from tests.gateway.test_gateway_keys import MASTER
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess


def test_embeddings_are_kept_per_input_and_only_new_inputs_go_upstream(upstream: UpstreamProcess,
                                                                        tmp_path: Path) -> None:
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.http() as http:
        a, b, c = fresh("one two"), fresh("three"), fresh("four five six")
        first = http.post("/v1/embeddings", json={"model": "embed", "input": [a, b]})
        assert first.headers[CACHE_HEADER] == "miss" and b'"object": "list"' in first.content  # the upstream's bytes
        vectors = {text: item["embedding"] for text, item in zip([a, b], first.json()["data"], strict=True)}

        again = http.post("/v1/embeddings", json={"model": "embed", "input": [a, b]})
        assert again.headers[CACHE_HEADER] == "hit" and upstream.stats()["requests"] == 1
        assert [d["embedding"] for d in again.json()["data"]] == [vectors[a], vectors[b]]
        assert again.json()["usage"] == {"prompt_tokens": 0, "total_tokens": 0}  # nothing read upstream

        # A batch of new and known inputs: only the new ones go upstream, and come back in their places.
        mixed = gw.openai().embeddings.with_raw_response.create(model="embed", input=[c, b, a],
                                                              encoding_format="float")
        assert mixed.headers[CACHE_HEADER] == "partial" and upstream.stats()["requests"] == 2
        assert upstream.stats()["bodies"][-1]["input"] == [c]
        answer = mixed.parse()
        assert [d.index for d in answer.data] == [0, 1, 2]
        assert [d.embedding for d in answer.data[1:]] == [vectors[b], vectors[a]]
        assert answer.data[0].embedding[:3] == [4.0, float(ord("a")), 0.0]  # c's: four words, asked alone
        assert answer.usage.prompt_tokens == 4  # what the upstream read: c alone

        # Another encoding is another answer; a single string is the same input as a list of one.
        b64 = http.post("/v1/embeddings", json={"model": "embed", "input": a, "encoding_format": "base64"})
        assert b64.headers[CACHE_HEADER] == "miss"
        single = http.post("/v1/embeddings", json={"model": "embed", "input": a})
        assert single.headers[CACHE_HEADER] == "hit" and single.json()["data"][0]["embedding"] == vectors[a]
        assert upstream.stats()["requests"] == 3

        rows = {r["request_id"]: r for r in gw.rows()}
        assert rows[request_id_of(again)]["cache_hit"] is True and rows[request_id_of(again)]["cost_usd"] == 0
        partial = rows[mixed.headers["x-pitstop-request-id"]]
        assert partial["cache_hit"] is False and partial["prompt_tokens"] == 4 and partial["cost_usd"] > 0
        assert partial["extra"]["cached_inputs"] == 2


def test_the_responses_and_messages_apis_are_cached_by_header(upstream: UpstreamProcess, tmp_path: Path) -> None:
    import anthropic

    with running_gateway(cached_config(tmp_path, upstream)) as gw:
        client, prompt = gw.openai(), fresh("[words:4]")
        answers = [client.responses.with_raw_response.create(model="up", input=prompt, temperature=0)
                   for _ in range(2)]
        assert [a.headers[CACHE_HEADER] for a in answers] == ["miss", "hit"]
        first, second = (a.parse() for a in answers)
        assert first.id != second.id and first.output_text == second.output_text  # a Response of its own
        assert client.responses.retrieve(second.id).output_text == first.output_text  # and stored as any
        with client.responses.stream(model="up", input=prompt, temperature=0) as stream:
            assert stream.get_final_response().output_text == first.output_text

        claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
        kwargs = {"model": "up", "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
        sent = [claude.messages.with_raw_response.create(**kwargs, extra_headers={CACHE_HEADER: "use-cache"})
                for _ in range(2)]
        assert [s.headers[CACHE_HEADER] for s in sent] == ["miss", "hit"]
        assert sent[0].parse().content[0].text == sent[1].parse().content[0].text
        assert upstream.stats()["requests"] == 2  # one for the Responses API's chat, one for the Messages one


def test_a_batch_run_again_is_answered_from_the_cache(upstream: UpstreamProcess, tmp_path: Path) -> None:
    from tests.gateway.test_gateway_batches import ended, jsonl

    prompts = [fresh(f"[words:{i + 1}]") for i in range(5)]
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": chat(prompts[i % 5], temperature=0)} for i in range(8)]  # three lines ask again
    with running_gateway(cached_config(tmp_path, upstream)) as gw, gw.openai() as client:
        outputs = []
        for _ in range(2):
            uploaded = client.files.create(file=("eval.jsonl", jsonl(lines)), purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            done = ended(client, batch.id)
            assert done.status == "completed" and done.output_file_id is not None
            outputs.append([json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()])
        assert upstream.stats()["requests"] == 5  # each distinct question once, over both runs
        texts = [[r["response"]["body"]["choices"][0]["message"]["content"] for r in run] for run in outputs]
        assert texts[0] == texts[1] and [len(t.split()) for t in texts[0]] == [1, 2, 3, 4, 5, 1, 2, 3]
        second = gw.rows([r["response"]["request_id"] for r in outputs[1]])
        assert len(second) == 8 and all(row["cache_hit"] and row["cost_usd"] == 0 for row in second)


def flush_and_check(gw_url: str, suffix: str = "") -> None:
    """Keep a chat and an embedding, drop the embeddings model's answers, then all of them."""
    with httpx.Client(base_url=gw_url, timeout=30) as http:
        master = {"authorization": f"Bearer {MASTER}"}
        body, vectors = chat(fresh(), temperature=0, model=f"up{suffix}"), {"model": f"embed{suffix}", "input": fresh()}
        post = [("/v1/chat/completions", body), ("/v1/embeddings", vectors)]

        def seen() -> list[str]:
            return [http.post(path, json=b, headers=master).headers[CACHE_HEADER] for path, b in post]

        assert seen() == ["miss", "miss"] and seen() == ["hit", "hit"]
        assert http.delete("/v1/cache", params={"model": f"embed{suffix}"}).status_code == 401  # the master key only
        flushed = http.delete("/v1/cache", params={"model": f"embed{suffix}"}, headers=master)
        assert flushed.status_code == 200 and flushed.json() == {"object": "cache.flush", "model": f"embed{suffix}",
                                                                 "deleted": 1}
        assert seen() == ["hit", "miss"]
        unknown = http.delete("/v1/cache", params={"model": "nope"}, headers=master)
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        if not suffix:  # all of it: only where no other test's entries share the store
            assert http.delete("/v1/cache", headers=master).json()["deleted"] == 2
            assert seen() == ["miss", "miss"]


def test_the_master_key_flushes_the_cache(upstream: UpstreamProcess, tmp_path: Path) -> None:
    raw = cached_config(tmp_path, upstream)
    raw["auth"] = {"require_keys": True, "master_key": MASTER}
    with running_gateway(raw) as gw:
        flush_and_check(gw.url)
    off = gateway_config(tmp_path / "off", [model_entry("up", upstream.api_base)],
                         auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(off) as gw, gw.http() as http:
        refused = http.delete("/v1/cache", headers={"authorization": f"Bearer {MASTER}"})
        assert refused.status_code == 404 and "cache" in refused.json()["error"]["message"]


@needs_redis
def test_a_flush_on_redis_empties_every_replica_and_a_model_pointed_elsewhere_starts_afresh(
        upstream: UpstreamProcess, tmp_path: Path) -> None:
    suffix = f"-{uuid.uuid4().hex[:8]}"  # this run's models alone are flushed from the shared Redis
    raw = cached_config(tmp_path, upstream, suffix, backend="redis")
    raw |= {"redis_url": REDIS_URL, "auth": {"require_keys": True, "master_key": MASTER}}
    with running_gateway(raw) as gw:
        flush_and_check(gw.url, suffix)
        answer = chat(fresh(), temperature=0, model=f"up{suffix}")
        with gw.http() as http:
            master = {"authorization": f"Bearer {MASTER}"}
            assert http.post("/v1/chat/completions", json=answer, headers=master).headers[CACHE_HEADER] == "miss"
    moved = json.loads(json.dumps(raw))  # the same name, now served by another upstream model
    moved["model_list"][0]["litellm_params"]["model"] = f"hosted_vllm/up{suffix}"
    moved["storage"] = {"url": f"sqlite:///{tmp_path / 'moved.db'}", "spool_path": None}
    with running_gateway(moved) as gw, gw.http() as http:
        master = {"authorization": f"Bearer {MASTER}"}
        assert http.post("/v1/chat/completions", json=answer, headers=master).headers[CACHE_HEADER] == "miss"
        assert http.post("/v1/chat/completions", json=answer, headers=master).headers[CACHE_HEADER] == "hit"
