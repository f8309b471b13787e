"""Stored chat completions over a real socket with the openai SDK: a chat with `store: true` (whole or
streamed, routed or named) is kept with its messages and settings and read back with
`client.chat.completions.list/retrieve/update/delete` and `.messages.list`; `store` never reaches the
upstream; a key reads only its own; listing filters by model and metadata and pages both ways; stored
completions expire; the database away keeps the answer (the writer stores it once it is back); `pitstop
export chat-completions` writes them as a fine-tuning file; bad input is a 400."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from storage.chat_completions import ChatCompletionStore
from storage.keys import KeyStore
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    run_cli,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres


def config(tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], **extra: object) -> dict:
    models = [model_entry("small", upstreams[0].api_base, tier="weak"),
              model_entry("big", upstreams[1].api_base, tier="strong", price_in=1e-5, price_out=2e-5)]
    return gateway_config(tmp_path, models, route_groups=[{"name": "auto", "models": ["small", "big"],
                                                           "router": "random"}], **extra)


@pytest.fixture
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path, upstream_processes)) as gateway:
        yield gateway


def chat(client: openai.OpenAI, text: str, model: str = "small", **fields: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **fields)


def test_a_stored_chat_is_read_back_with_its_messages_and_settings(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "[words:4] "}, {"type": "text", "text": "hi"}]}]
        made = client.chat.completions.create(model="small", messages=messages, store=True, temperature=0.5, seed=7,
                                              metadata={"job": "distil", "split": "train"}, user="u-1")
        got = client.chat.completions.retrieve(made.id)
        listed = client.chat.completions.messages.list(made.id)
        chat(client, "[words:2] not stored")
        chat(client, "[words:2] not stored either", store=False)
        everything = list(client.chat.completions.list())
    assert got.id == made.id and got.choices[0].message.content == made.choices[0].message.content
    assert got.usage is not None and made.usage is not None and got.usage.total_tokens == made.usage.total_tokens
    extra = got.model_dump()
    assert (extra["metadata"], extra["temperature"], extra["seed"], extra["input_user"]) == (
        {"job": "distil", "split": "train"}, 0.5, 7, "u-1")
    assert extra["request_id"].startswith("req-") and extra["tools"] is None
    assert [(m.id, m.role, m.content) for m in listed.data] == [
        (f"{made.id}-0", "system", "Be brief."), (f"{made.id}-1", "user", "[words:4] hi")]
    assert listed.data[0].content_parts is None and len(listed.data[1].content_parts or []) == 2
    assert [c.id for c in everything] == [made.id]  # only what asked to be stored
    assert all("store" not in body for body in upstreams[0].stats()["bodies"])  # Pitstop's to do


def test_a_streamed_chat_is_stored_whole_before_its_end(gw: Gateway) -> None:
    with gw.openai() as client:
        stream = client.chat.completions.create(model="small", stream=True, store=True,
                                                messages=[{"role": "user", "content": "[words:6] tell me"}])
        chunks = list(stream)
        got = client.chat.completions.retrieve(chunks[0].id)  # at once: stored before [DONE]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert got.choices[0].message.content == streamed and len(streamed.split()) == 6
    assert got.choices[0].finish_reason == "stop" and got.usage is not None and got.usage.completion_tokens == 6


def test_listing_filters_by_model_and_metadata_and_pages_both_ways(gw: Gateway) -> None:
    with gw.openai() as client:
        made = [chat(client, f"[words:2] q{i}", model="small" if i % 2 else "big", store=True,
                     metadata={"run": "a" if i < 4 else "b", "i": str(i)}) for i in range(6)]
        routed = chat(client, "[words:2] routed", model="auto", store=True)
        small = [c.id for c in client.chat.completions.list(model="small")]
        run_a = [c.id for c in client.chat.completions.list(metadata={"run": "a"})]
        run_b_odd = [c.id for c in client.chat.completions.list(metadata={"run": "b", "i": "5"})]
        by_group = [c.id for c in client.chat.completions.list(model="auto")]
        first = client.chat.completions.list(limit=3)
        rest = client.chat.completions.list(limit=3, after=first.data[-1].id)
        newest = client.chat.completions.list(limit=2, order="desc")
        every = [c.id for c in client.chat.completions.list(limit=2)]  # the SDK follows the pages
    ids = [c.id for c in made]
    assert small == [ids[i] for i in (1, 3, 5)] + ([routed.id] if routed.model == "small" else [])
    assert run_a == ids[:4] and run_b_odd == [ids[5]] and by_group == [routed.id]
    assert [c.id for c in first.data] == ids[:3] and first.has_more
    assert [c.id for c in rest.data] == ids[3:6] and rest.has_more
    assert [c.id for c in newest.data] == [routed.id, ids[5]]
    assert every == [*ids, routed.id]


def test_metadata_is_changed_and_a_completion_deleted(gw: Gateway) -> None:
    with gw.openai() as client:
        made = chat(client, "[words:2] hi", store=True, metadata={"label": "unsure"})
        changed = client.chat.completions.update(made.id, metadata={"label": "good"})
        found = [c.id for c in client.chat.completions.list(metadata={"label": "good"})]
        gone = client.chat.completions.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.messages.list(made.id)
    assert changed.model_dump()["metadata"] == {"label": "good"} and found == [made.id]
    assert gone.deleted and gone.id == made.id and gone.object == "chat.completion.deleted"


def test_a_key_reads_only_its_own(upstream_processes: tuple, tmp_path: Path) -> None:
    with running_gateway(config(tmp_path, upstream_processes, auth={"require_keys": True})) as gw:
        keys = KeyStore(gw.storage_url)
        _, first = keys.create("a")
        _, second = keys.create("b")
        with gw.openai(api_key=first) as a, gw.openai(api_key=second) as b:
            made = chat(a, "[words:2] mine", store=True)
            for call in (lambda: b.chat.completions.retrieve(made.id), lambda: b.chat.completions.delete(made.id),
                         lambda: b.chat.completions.update(made.id, metadata={"x": "y"}),
                         lambda: b.chat.completions.messages.list(made.id)):
                with pytest.raises(openai.NotFoundError):
                    call()
            assert [c.id for c in b.chat.completions.list()] == []
            assert [c.id for c in a.chat.completions.list()] == [made.id]


def test_stored_completions_expire_and_can_be_turned_off(upstream_processes: tuple, tmp_path: Path) -> None:
    with running_gateway(config(tmp_path, upstream_processes)) as gw, gw.openai() as client:
        made = chat(client, "[words:2] short-lived", store=True)
        store = ChatCompletionStore(gw.storage_url)
        assert store.purge(datetime.now(UTC)) == 0
        assert store.purge(datetime.now(UTC) + timedelta(days=31)) == 1  # kept 30 days
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(made.id)
    off = config(tmp_path / "off", upstream_processes, stored_completions={"enabled": False})
    with running_gateway(off) as gw, gw.openai() as client:
        chat(client, "[words:2] not kept", store=True)
        assert list(client.chat.completions.list()) == []


@pytest.mark.parametrize("call, param", [
    (lambda c: chat(c, "x", store="yes"), "store"),
    (lambda c: chat(c, "x", store=True, metadata={"k": 1}), "metadata"),
    (lambda c: chat(c, "x", store=True, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    (lambda c: c.chat.completions.list(limit=101), "limit"),
    (lambda c: c.chat.completions.list(order="sideways"), "order"),
    (lambda c: c.chat.completions.list(metadata={"k": "v" * 513}), "metadata"),
    (lambda c: c.post("/chat/completions/chatcmpl-x", body={"metadata": {}, "model": "big"}, cast_to=object), "model"),
    (lambda c: c.post("/chat/completions/chatcmpl-x", body={}, cast_to=object), "metadata"),
])
def test_bad_input_is_a_400_naming_the_field(gw: Gateway, call: object, param: str) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        call(client)  # type: ignore[operator]
    assert refused.value.body["param"] == param  # type: ignore[index]


def test_an_unknown_cursor_is_a_404_or_a_400(gw: Gateway) -> None:
    with gw.openai() as client:
        made = chat(client, "[words:2] hi", store=True)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.list(after="chatcmpl-nothing")
        with pytest.raises(openai.BadRequestError, match="no message"):
            client.chat.completions.messages.list(made.id, after="nothing")


def test_the_database_away_keeps_the_answer_for_later(
        upstream_processes: tuple, tmp_path: Path, cluster: ThrowawayPostgres) -> None:
    with running_gateway(config(tmp_path, upstream_processes, storage_url=cluster.url)) as gw, gw.openai() as client:
        cluster.stop("immediate")
        try:
            started = time.monotonic()
            made = chat(client, "[words:3] while the database is away", store=True)  # served anyway
            assert time.monotonic() - started < 20
            with pytest.raises(openai.InternalServerError, match="unavailable") as refused:
                client.chat.completions.list()
            assert refused.value.status_code == 503
        finally:
            cluster.start()
        got = wait_until(lambda: _found(client, made.id), timeout=30, what="the stored completion, once written")
    assert got.choices[0].message.content == made.choices[0].message.content


def _found(client: openai.OpenAI, completion_id: str) -> object:
    try:
        return client.chat.completions.retrieve(completion_id)
    except openai.APIError:
        return None


def test_a_batch_line_that_asks_is_stored(gw: Gateway) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "small", "store": True, "metadata": {"source": "batch"},
                     "messages": [{"role": "user", "content": "[words:2] batched"}]}}
    with gw.openai() as client:
        uploaded = client.files.create(file=("q.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_until(lambda: client.batches.retrieve(batch.id).status == "completed", what="the batch")
        stored = list(client.chat.completions.list(metadata={"source": "batch"}))
    assert len(stored) == 1 and stored[0].choices[0].message.content is not None


def test_stored_completions_export_as_a_fine_tuning_file(upstream_processes: tuple, tmp_path: Path) -> None:
    raw = config(tmp_path, upstream_processes)
    path = write_config(tmp_path / "pitstop.yaml", raw)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with running_gateway(raw) as gw, gw.openai() as client:
        kept = [chat(client, f"[words:3] question {i}", store=True, metadata={"job": "distil" if i < 3 else "eval"})
                for i in range(4)]
        called = chat(client, "find it", store=True, metadata={"job": "distil"}, tools=tools)
    out = tmp_path / "export" / "train.jsonl"
    done = run_cli("export", "chat-completions", "--config", str(path), "--out", str(out), "--metadata", "job=distil")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(lines)} lines" in done.stdout and len(lines) == 4
    assert [line["messages"][0]["content"] for line in lines] == [
        *(f"[words:3] question {i}" for i in range(3)), "find it"]
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)
    assert [line["messages"][-1].get("content") for line in lines[:3]] == [c.choices[0].message.content for c in kept[:3]]
    assert "tools" not in lines[0] and lines[3]["tools"] == tools
    calls = called.choices[0].message.tool_calls
    assert calls and lines[3]["messages"][-1]["tool_calls"][0]["function"]["name"] == calls[0].function.name
    bad = run_cli_here("export", "chat-completions", "--config", str(path), "--out", str(out), "--metadata", "nokey")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
