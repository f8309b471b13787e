"""The Files and Batch APIs over a real socket with the openai SDK: a JSONL file uploaded, a batch of its
requests served (chat, Responses and embeddings lines) with each answer in the output file and each
error in the error file, in the input's order, each line leaving its own outcome row; a batch cancelled
keeps what it finished; files listed, downloaded and deleted; bad input a clear 4xx."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
from openai.types import Batch
from sqlalchemy import create_engine, update

from gateway.batches import BATCH_PRIORITY
from storage.files import FILES, BatchStore, FileStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_embeddings import embedding_model
from tests.gateway.upstream import UpstreamProcess

ENDED = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    raw = gateway_config(tmp_path_factory.mktemp("batches"), [model_entry("up", upstream_processes[0].api_base),
                                                              embedding_model("emb", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


def jsonl(lines: list[dict]) -> bytes:
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def chat_line(custom_id: str, text: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "up", "messages": [{"role": "user", "content": text}]}}


def ended(client: openai.OpenAI, batch_id: str, timeout: float = 30) -> Batch:
    return wait_until(lambda: (b := client.batches.retrieve(batch_id)).status in ENDED and b, timeout=timeout,
                      what=f"{batch_id} ended")


def test_a_batch_is_served_into_its_output_and_error_files(gw: Gateway, upstreams: tuple) -> None:
    lines = [chat_line(f"q{i}", f"[words:{i + 1}] question {i}") for i in range(12)]
    lines.insert(5, chat_line("refused", "[fail:400] x"))
    with gw.openai() as client:
        uploaded = client.files.create(file=("questions.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"job": "eval"})
        done = ended(client, batch.id)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = client.files.content(done.output_file_id).text
        errors = client.files.content(done.error_file_id).text
        listed = [b.id for b in client.batches.list(limit=10)]
        outputs = [f.filename for f in client.files.list(purpose="batch_output")]
    assert batch.status == "in_progress" and batch.request_counts is not None and batch.request_counts.total == 13
    assert done.status == "completed" and done.metadata == {"job": "eval"}
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (12, 1)
    records = [json.loads(line) for line in output.splitlines()]
    assert [r["custom_id"] for r in records] == [f"q{i}" for i in range(12)]  # the input's order
    assert [len(r["response"]["body"]["choices"][0]["message"]["content"].split()) for r in records] == list(range(1, 13))
    refused = [json.loads(line) for line in errors.splitlines()]
    assert [(r["custom_id"], r["response"]["status_code"]) for r in refused] == [("refused", 400)]
    assert batch.id in listed and f"{batch.id}_output.jsonl" in outputs
    rows = gw.rows([r["response"]["request_id"] for r in records])  # each line leaves its row
    assert len(rows) == 12 and {row["status"] for row in rows} == {"ok"}
    assert {b["priority"] for b in upstreams[0].stats()["bodies"] if "priority" in b} <= {BATCH_PRIORITY}


@pytest.mark.parametrize("url, body, check", [
    ("/v1/responses", {"model": "up", "input": "[words:3] hi"},
     lambda body: body["object"] == "response" and len(body["output"][0]["content"][0]["text"].split()) == 3),
    ("/v1/embeddings", {"model": "emb", "input": "embed me"},
     lambda body: body["object"] == "list" and len(body["data"]) == 1),
])
def test_a_batch_serves_responses_and_embeddings_lines(gw: Gateway, url: str, body: dict, check) -> None:
    with gw.openai() as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl([{"custom_id": "a", "method": "POST", "url": url,
                                                                  "body": body}])), purpose="batch")
        done = ended(client, client.batches.create(input_file_id=uploaded.id, endpoint=url,  # type: ignore[arg-type]
                                                   completion_window="24h").id)
        assert done.output_file_id is not None
        record = json.loads(client.files.content(done.output_file_id).text)
    assert done.status == "completed" and record["response"]["status_code"] == 200 and check(record["response"]["body"])


def test_a_cancelled_batch_keeps_what_it_finished(gw: Gateway) -> None:
    lines = [chat_line(f"q{i}", f"[delay:{0.1 if i < 8 else 3}] question {i}") for i in range(24)]
    with gw.openai() as client:
        uploaded = client.files.create(file=("slow.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_until(lambda: (client.batches.retrieve(batch.id).request_counts or batch.request_counts).completed >= 8,
                   what="the quick lines")
        cancelling = client.batches.cancel(batch.id)
        done = ended(client, batch.id)
        assert done.output_file_id is not None
        finished = [json.loads(line)["custom_id"] for line in client.files.content(done.output_file_id).text.splitlines()]
    assert cancelling.status in ("cancelling", "cancelled") and done.status == "cancelled"
    assert done.cancelled_at is not None and done.request_counts is not None
    assert {f"q{i}" for i in range(8)} <= set(finished) and len(finished) < 24


def test_a_batch_whose_window_closes_keeps_what_it_answered_and_says_which_expired(gw: Gateway) -> None:
    """As at OpenAI: the lines answered by the end of the completion window are in the output file,
    the rest in the error file as `batch_expired`, and the batch is `expired`."""
    lines = [chat_line(f"q{i}", f"[delay:{0.05 if i % 3 else 30}] question {i}") for i in range(9)]
    with gw.openai() as client:
        uploaded = client.files.create(file=("window.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="2s")  # type: ignore[arg-type]
        done = ended(client, batch.id)
        assert done.output_file_id is not None and done.error_file_id is not None
        answered = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        expired = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert batch.expires_at == batch.created_at + 2
    assert done.status == "expired" and done.expired_at is not None and done.completed_at is None
    assert done.expired_at >= batch.expires_at  # type: ignore[operator]
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (6, 3)
    assert [r["custom_id"] for r in answered] == [f"q{i}" for i in range(9) if i % 3]
    assert [(r["custom_id"], r["response"], r["error"]["code"]) for r in expired] == [
        (f"q{i}", None, "batch_expired") for i in (0, 3, 6)]


def test_files_are_uploaded_read_listed_and_deleted(gw: Gateway) -> None:
    with gw.openai() as client:
        uploaded = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="user_data")
        read = client.files.retrieve(uploaded.id)
        content = client.files.content(uploaded.id).read()
        listed = [f.id for f in client.files.list(purpose="user_data")]
        deleted = client.files.delete(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(uploaded.id)
    assert (read.filename, read.bytes, read.purpose) == ("notes.jsonl", 9, "user_data") and content == b'{"a": 1}\n'
    assert uploaded.id in listed and deleted.deleted


@pytest.mark.parametrize("content, fields, status, param", [
    (b"not json\n", {}, 400, "input_file_id"),
    (jsonl([{**chat_line("a", "x"), "url": "/v1/embeddings"}]), {}, 400, "input_file_id"),  # another endpoint
    (jsonl([chat_line("a", "x"), chat_line("a", "y")]), {}, 400, "input_file_id"),  # a custom_id twice
    (jsonl([{**chat_line("a", "x"), "body": {"model": "up", "messages": [], "stream": True}}]), {}, 400,
     "input_file_id"),
    (jsonl([chat_line("a", "x")]), {"endpoint": "/v1/images"}, 400, "endpoint"),
    (jsonl([chat_line("a", "x")]), {"completion_window": "0s"}, 400, "completion_window"),
    (jsonl([chat_line("a", "x")]), {"completion_window": "169h"}, 400, "completion_window"),  # over a week
    (jsonl([chat_line("a", "x")]), {"completion_window": "1d"}, 400, "completion_window"),
    (jsonl([chat_line("a", "x")]), {"completion_window": 3600}, 400, "completion_window"),
    (jsonl([chat_line("a", "x")]), {"input_file_id": "file-nope"}, 404, "input_file_id"),
])
def test_bad_batches_are_clear_4xx(gw: Gateway, content: bytes, fields: dict, status: int, param: str) -> None:
    with gw.openai() as client:
        uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    with gw.http() as http:
        answer = http.post("/v1/batches", json={"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h", **fields})
    assert answer.status_code == status and answer.json()["error"]["param"] == param


def test_files_expire_as_asked_and_are_gone_once_they_have(gw: Gateway) -> None:
    """`expires_after` on upload (a `batch` file's default: 30 days; others kept), a batch's
    `output_expires_after` for its output file; an expired file is a 404 at once, and swept."""
    with gw.openai() as client:
        hour = client.files.create(file=("h.jsonl", jsonl([chat_line("a", "x")])), purpose="batch",
                                   expires_after={"anchor": "created_at", "seconds": 3600})
        month = client.files.create(file=("m.jsonl", jsonl([chat_line("a", "[words:2] x")])), purpose="batch")
        kept = client.files.create(file=("k.txt", b"notes"), purpose="user_data")
        batch = client.batches.create(input_file_id=month.id, endpoint="/v1/chat/completions", completion_window="24h",
                                      output_expires_after={"anchor": "created_at", "seconds": 7200})
        done = ended(client, batch.id)
        assert done.output_file_id is not None
        output = client.files.retrieve(done.output_file_id)
        for bad in ({"anchor": "created_at", "seconds": 60}, {"anchor": "now", "seconds": 3600}):
            with pytest.raises(openai.BadRequestError) as refused:
                client.files.create(file=("b.txt", b"x"), purpose="user_data", expires_after=bad)  # type: ignore[arg-type]
            assert refused.value.body["param"] == "expires_after"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=month.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  output_expires_after={"anchor": "created_at", "seconds": 31 * 86_400})
        with create_engine(gw.storage_url).begin() as connection:  # the hour passes
            connection.execute(update(FILES).where(FILES.c.id == hour.id)
                               .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(hour.id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(hour.id)
        listed = [f.id for f in client.files.list(purpose="batch")]
    assert (hour.expires_at, month.expires_at, kept.expires_at) == (
        hour.created_at + 3600, month.created_at + 30 * 86_400, None)
    assert output.expires_at == output.created_at + 7200
    assert month.id in listed and hour.id not in listed
    assert FileStore(gw.storage_url).purge(datetime.now(UTC)) == 1 and FileStore(gw.storage_url).get(month.id)


def test_bad_uploads_are_clear_400s(gw: Gateway) -> None:
    with gw.http() as http:
        not_multipart = http.post("/v1/files", json={"purpose": "batch"})
        bad_purpose = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "nope"})
        no_file = http.post("/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"x")})
    assert [(r.status_code, r.json()["error"]["param"]) for r in (not_multipart, bad_purpose, no_file)] == [
        (400, "file"), (400, "purpose"), (400, "file")]


def cut_by_a_shutdown(raw: dict, lines: list[dict], window: str) -> tuple[Batch, str]:
    """A batch of a quick line and a slow one, on a gateway that shuts down once the quick one is written
    (and lets the batch go); the batch as made, and the database it is in."""
    raw["server"] = {**raw.get("server", {}), "graceful_shutdown_s": 0.2}
    with running_gateway(raw) as gw, gw.openai() as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window=window)  # type: ignore[arg-type]
        wait_until(lambda: BatchStore(gw.storage_url).records(batch.id), what="the quick line written")
    return batch, gw.storage_url


def test_a_batch_cut_by_a_shutdown_is_taken_over_and_its_finished_lines_are_not_served_again(
        tmp_path: Path, upstreams: tuple) -> None:
    """Nothing accepted is lost: the gateway lets the batch go at its shutdown, with what it finished
    written, and the next one to start on the same database serves only the rest."""
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)])
    batch, storage_url = cut_by_a_shutdown(raw, [chat_line("quick", "quick one"), chat_line("slow", "[delay:3] slow one")],
                                           "24h")
    left = BatchStore(storage_url).get(batch.id)
    with running_gateway(raw) as again, again.openai() as client:
        done = ended(client, batch.id)
        assert done.output_file_id is not None
        finished = [json.loads(line)["custom_id"] for line in client.files.content(done.output_file_id).text.splitlines()]
    asked = [m["content"] for body in upstreams[0].stats()["bodies"] for m in body.get("messages", [])]
    assert left is not None and left["status"] == "in_progress" and left["lease_until"] <= datetime.now(UTC)
    assert done.status == "completed" and finished == ["quick", "slow"]
    assert asked.count("quick one") == 1  # served by the first gateway only


def test_a_batch_taken_over_after_its_window_closed_expires_without_serving_the_rest(
        tmp_path: Path, upstreams: tuple) -> None:
    """No gateway ran the batch when its window closed: the next one to start expires it at once,
    keeping what the first one finished, rather than serving the rest late."""
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)])
    batch, _ = cut_by_a_shutdown(raw, [chat_line("quick", "quick line"), chat_line("late", "[delay:4] late line")], "3s")
    assert batch.expires_at is not None
    time.sleep(max(0.0, batch.expires_at + 1 - time.time()))
    with running_gateway(raw) as again, again.openai() as client:
        done = ended(client, batch.id)
        assert done.output_file_id is not None and done.error_file_id is not None
        finished = [json.loads(line)["custom_id"] for line in client.files.content(done.output_file_id).text.splitlines()]
        expired = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    asked = [m["content"] for body in upstreams[0].stats()["bodies"] for m in body.get("messages", [])]
    assert done.status == "expired" and finished == ["quick"]
    assert [(r["custom_id"], r["error"]["code"]) for r in expired] == [("late", "batch_expired")]
    assert asked.count("[delay:4] late line") == 1  # the first gateway's try, cut by its shutdown; never again
