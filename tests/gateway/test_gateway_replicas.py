"""Two `pitstop serve` processes sharing one Redis and one PostgreSQL database enforce one key's rpm
limit exactly and one budget exactly (each request holds its worst case while it runs), both log to one
table, a stored Response made on one is continued and deleted on the other, and a turn running on one
holds its conversation on the other, and a background response or a batch run on one is read and
cancelled on the other, and taken over by the other when the first is killed."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import redis
import sqlalchemy as sa

from storage.files import BatchStore
from storage.keys import KeyStore
from tests.gateway.harness import (
    PRICE_IN,
    PRICE_OUT,
    GatewayProcess,
    gateway_config,
    gateway_processes,
    model_entry,
    read_outcomes,
    run_cli,
    wait_until,
    write_config,
)
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess
from tests.storage.conftest import pg_url_for, scratch_database

pytestmark = needs_redis

COST = 1 * PRICE_IN + 5 * PRICE_OUT  # one prompt word, five answer words
RPM = 7
BUDGET_REQUESTS = 10.5  # the budget, in requests' worth
WORKERS = 4  # concurrent clients, two on each gateway
MASTER = "replicas-master-key"


@pytest.fixture(scope="module")
def shared_db(pg_admin: sa.Engine, pg_migrated_template: str) -> Iterator[str]:
    with scratch_database(pg_admin, template=pg_migrated_template) as name:
        yield pg_url_for(name)


@pytest.fixture(scope="module")
def replicas(upstream_processes: tuple[UpstreamProcess, UpstreamProcess], tmp_path_factory: pytest.TempPathFactory,
             shared_db: str) -> Iterator[tuple[list[GatewayProcess], Path]]:
    """Two `pitstop serve` processes, one config each (own spool file), one Redis, one database."""
    root = tmp_path_factory.mktemp("replicas")
    configs = []
    for i in range(2):
        (root / f"gw{i}").mkdir()
        raw = gateway_config(root / f"gw{i}", [model_entry("up", upstream_processes[0].api_base)],
                             storage_url=shared_db, redis_url=REDIS_URL,
                             auth={"require_keys": True, "master_key": MASTER})
        configs.append(write_config(root / f"gw{i}" / "pitstop.yaml", raw))
    with gateway_processes(*configs) as processes:
        yield processes, configs[0]


@pytest.fixture
def key_ids() -> Iterator[list[str]]:
    """Key ids a test creates; their Redis state is deleted afterwards."""
    ids: list[str] = []
    yield ids
    client = redis.Redis.from_url(REDIS_URL)
    for key_id in ids:
        for name in client.scan_iter(match=f"pitstop:default:limits:{{{key_id}}}:*"):
            client.delete(name)
    client.close()


def rows_of(url: str, key_id: str) -> list[dict]:
    return [r for r in read_outcomes(url) if r["api_key_id"] == key_id]


def ask(url: str, secret: str, **fields: object) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                      json={"model": "up", "messages": [{"role": "user", "content": "x"}], **fields}, timeout=30)


def test_rpm_limit_is_exact_across_two_gateways(replicas: tuple, shared_db: str, key_ids: list[str]) -> None:
    (one, two), config = replicas
    created = run_cli("keys", "create", "--config", str(config), "--name", "shared", "--rpm", str(RPM))
    assert created.returncode == 0, created.stderr
    key_id = re.search(r"^id:\s+(\S+)$", created.stdout, re.M).group(1)
    secret = re.search(r"^secret:\s+(\S+)$", created.stdout, re.M).group(1)
    key_ids.append(key_id)

    warmup = [ask(url, secret) for url in (one.url, two.url, one.url, two.url)]  # both know the key now
    assert [r.status_code for r in warmup] == [200] * 4
    urls = itertools.islice(itertools.cycle([one.url, two.url]), 12)
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda url: ask(url, secret), urls))
    statuses = sorted(r.status_code for r in burst)
    assert statuses == [200] * (RPM - 4) + [429] * (12 - RPM + 4)
    for refused in (r for r in burst if r.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60

    mine = wait_until(lambda: len(found := rows_of(shared_db, key_id)) >= 16 and found, what="16 rows")
    assert len(mine) == 16
    assert sorted(r["http_status"] for r in mine) == sorted(r.status_code for r in warmup + burst)


def test_one_budget_across_two_gateways(replicas: tuple, shared_db: str, key_ids: list[str]) -> None:
    """Each request holds its worst case (max_tokens 5: exactly its cost here) while it runs, so four
    clients on two gateways start exactly the requests the budget covers, and the one that crosses it."""
    (one, two), _ = replicas
    key_id, secret = KeyStore(shared_db).create("budget", budget_usd=BUDGET_REQUESTS * COST)
    key_ids.append(key_id)

    def spend_until_refused(url: str) -> list[str]:
        outcomes = []
        for _ in range(60):
            response = ask(url, secret, max_tokens=5)
            outcomes.append("ok" if response.status_code == 200 else response.json()["error"]["code"])
            if response.status_code == 429 and outcomes[-1] == "budget_held":  # others' requests hold the rest
                assert response.headers["retry-after"] == "1"
                time.sleep(0.05)
            elif response.status_code != 200:
                break
        return outcomes

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(spend_until_refused, [one.url, two.url] * (WORKERS // 2)))
    assert all(outcomes[-1] == "budget_exceeded" for outcomes in results), "every client ends refused"
    assert {o for outcomes in results for o in outcomes} <= {"ok", "budget_held", "budget_exceeded"}
    admitted = sum(outcomes.count("ok") for outcomes in results)
    assert admitted == math.ceil(BUDGET_REQUESTS)  # without holds: up to BUDGET_REQUESTS + WORKERS

    refusals = sum(len(outcomes) for outcomes in results) - admitted
    rows = wait_until(lambda: len(found := rows_of(shared_db, key_id)) >= admitted + refusals and found,
                      what="all rows")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == admitted and len(rows) == admitted + refusals
    logged = sum(r["cost_usd"] for r in ok)
    assert logged == pytest.approx(admitted * COST)
    # Spend recorded by both processes: in Redis (what admission reads) and in the key's row.
    client = redis.Redis.from_url(REDIS_URL)
    expected = str(admitted * round(COST * 1e9)).encode()  # nano-USD
    wait_until(lambda: client.get(f"pitstop:default:limits:{{{key_id}}}:spent") == expected, what="Redis spend")
    client.close()
    wait_until(lambda: KeyStore(shared_db).get(key_id).spent_usd == pytest.approx(logged),
               what="spend in the database")


def test_a_response_made_on_one_gateway_is_continued_and_deleted_on_the_other(
        replicas: tuple, shared_db: str, key_ids: list[str], upstreams: tuple) -> None:
    (one, two), _ = replicas
    key_id, secret = KeyStore(shared_db).create("responses")
    key_ids.append(key_id)
    with one.gateway(shared_db).openai(api_key=secret) as a, two.gateway(shared_db).openai(api_key=secret) as b:
        first = a.responses.create(model="up", input="one")
        second = b.responses.create(model="up", input="two", previous_response_id=first.id)  # at once, elsewhere
        assert b.responses.retrieve(first.id).output_text == first.output_text
        third = a.responses.create(model="up", input="three", previous_response_id=second.id)
        assert upstreams[0].stats()["bodies"][-1]["messages"] == [
            {"role": "user", "content": "one"}, {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "two"}, {"role": "assistant", "content": second.output_text},
            {"role": "user", "content": "three"}]
        b.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError, match="deleted or has expired"):
            a.responses.create(model="up", input="four", previous_response_id=third.id)
    wait_until(lambda: len(rows_of(shared_db, key_id)) >= 4, what="4 rows")  # the last a 404
    rows = {r["request_id"]: r for r in rows_of(shared_db, key_id)}
    assert [rows["req-" + r.id.removeprefix("resp_")]["session_id"] for r in (second, third)] == [first.id] * 2


def test_a_turn_running_on_one_gateway_holds_its_conversation_on_the_other(
        replicas: tuple, shared_db: str, key_ids: list[str], upstreams: tuple) -> None:
    (one, two), _ = replicas
    key_id, secret = KeyStore(shared_db).create("conversations")
    key_ids.append(key_id)
    with one.gateway(shared_db).openai(api_key=secret) as a, two.gateway(shared_db).openai(api_key=secret) as b, \
            ThreadPoolExecutor(1) as pool:
        conversation = a.conversations.create()
        running = pool.submit(a.responses.create, model="up", conversation=conversation.id, input="[delay:1.5] one")
        wait_until(lambda: upstreams[0].stats()["requests"] >= 1, what="the turn upstream")
        with pytest.raises(openai.BadRequestError) as refused:
            b.responses.create(model="up", conversation=conversation.id, input="meanwhile")
        first = running.result()
        second = b.responses.create(model="up", conversation=conversation.id, input="two")  # free at once
        items = list(b.conversations.items.list(conversation.id, order="asc"))
    assert refused.value.body["code"] == "conversation_locked"  # type: ignore[index]
    assert [item.id for item in items][1::2] == [first.output[0].id, second.output[0].id]
    assert upstreams[0].stats()["requests"] == 2


def test_a_background_response_run_on_one_gateway_is_polled_and_cancelled_on_the_other(
        replicas: tuple, shared_db: str, key_ids: list[str], upstreams: tuple) -> None:
    (one, two), _ = replicas
    key_id, secret = KeyStore(shared_db).create("background")
    key_ids.append(key_id)
    with one.gateway(shared_db).openai(api_key=secret) as a, two.gateway(shared_db).openai(api_key=secret) as b:
        quick = a.responses.create(model="up", input="[delay:0.5] quick", background=True)
        done = wait_until(lambda: (r := b.responses.retrieve(quick.id)).status == "completed" and r, what="done")
        slow = a.responses.create(model="up", input="[delay:30] slow", background=True)
        wait_until(lambda: b.responses.retrieve(slow.id).status == "in_progress", what="running on the first")
        streamed = a.responses.create(model="up", input="[words:200] streamed", background=True, stream=True)
        first = next(iter(streamed))
        streamed.close()
        # Resumed on the other gateway: the run's last event, once it has ended there.
        resumed = list(b.responses.retrieve(first.response.id, stream=True, starting_after=first.sequence_number))  # type: ignore[union-attr]
        cancelled = b.responses.cancel(slow.id)
        # The first gateway sees the cancel at its next lease renewal (every 5 s) and stops the call.
        wait_until(lambda: any(r["request_id"] == "req-" + slow.id.removeprefix("resp_") and r["status"] == "aborted"
                               for r in rows_of(shared_db, key_id)), what="the run stopped", timeout=30)
        read = a.responses.retrieve(slow.id)
    assert done.output_text and cancelled.status == read.status == "cancelled"
    assert [e.type for e in resumed] == ["response.completed"] and resumed[0].sequence_number == 1
    assert len(resumed[0].response.output_text.split()) == 200  # type: ignore[union-attr]


def test_a_batch_run_on_one_gateway_is_read_and_cancelled_on_the_other(
        replicas: tuple, shared_db: str, key_ids: list[str]) -> None:
    (one, two), _ = replicas
    key_id, secret = KeyStore(shared_db).create("batches")
    key_ids.append(key_id)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "up", "messages": [{"role": "user", "content": f"[delay:{0.05 if i < 4 else 20}] {i}"}]}}
             for i in range(12)]
    with one.gateway(shared_db).openai(api_key=secret) as a, two.gateway(shared_db).openai(api_key=secret) as b:
        uploaded = a.files.create(file=("in.jsonl", "\n".join(json.dumps(line) for line in lines).encode()),
                                  purpose="batch")
        batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_until(lambda: (b.batches.retrieve(batch.id).request_counts or batch.request_counts).completed >= 4,
                   what="the quick lines, seen on the other gateway")
        b.batches.cancel(batch.id)  # the first gateway sees it at its next renewal (every second)
        done = wait_until(lambda: (r := b.batches.retrieve(batch.id)).status == "cancelled" and r, what="cancelled")
        assert done.output_file_id is not None
        finished = b.files.content(done.output_file_id).text.splitlines()
    assert {json.loads(line)["custom_id"] for line in finished} >= {"q0", "q1", "q2", "q3"} and len(finished) < 12


def test_work_whose_gateway_is_killed_is_taken_over_by_another(
        upstream_processes: tuple, upstreams: tuple, tmp_path: Path, shared_db: str, key_ids: list[str]) -> None:
    """Nothing accepted is lost: kill -9 the gateway running a batch and background responses; once their
    leases lapse (15 s) the other takes them over: the batch serves only the lines the first had not
    finished; each background response is served again as the same response (a streamed one's stream,
    resumed on the survivor, gets its end), a turn in a conversation once its conversation's lease lapsed
    too, its items added once."""
    configs = []
    for name in ("killed", "survivor"):
        (tmp_path / name).mkdir()
        raw = gateway_config(tmp_path / name, [model_entry("up", upstream_processes[0].api_base)],
                             storage_url=shared_db, auth={"require_keys": True, "master_key": MASTER})
        configs.append(write_config(tmp_path / name / "pitstop.yaml", raw))
    key_id, secret = KeyStore(shared_db).create("taken over")
    key_ids.append(key_id)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "up", "messages": [{"role": "user", "content": f"{'[delay:2] ' if i >= 4 else ''}line {i}"}]}}
             for i in range(6)]
    with gateway_processes(*configs) as (killed, survivor):
        with killed.gateway(shared_db).openai(api_key=secret) as a:
            uploaded = a.files.create(file=("in.jsonl", "\n".join(json.dumps(line) for line in lines).encode()),
                                      purpose="batch")
            batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
            conversation = a.conversations.create()
            background = [a.responses.create(model="up", input=f"[delay:3] [words:{n}] run {n}", background=True,
                                             **({"conversation": conversation.id} if n == 3 else {}))
                          for n in (2, 3)]
            streamed = a.responses.create(model="up", input="[delay:3] [words:4] run 4", background=True, stream=True)
            # Its id before its first event (that comes after the delay): named by its request id.
            streamed_id = "resp_" + streamed.response.headers["x-pitstop-request-id"].removeprefix("req-")
            wait_until(lambda: all(a.responses.retrieve(rid).status == "in_progress"
                                   for rid in [*(r.id for r in background), streamed_id]), what="the runs going")
        wait_until(lambda: len(BatchStore(shared_db).records(batch.id)) >= 4, what="the quick lines written")
        killed.proc.kill()
        killed.proc.wait()
        with survivor.gateway(shared_db).openai(api_key=secret) as b:
            done = wait_until(lambda: (r := b.batches.retrieve(batch.id)).status == "completed" and r, timeout=60,
                              what="the batch completed by the survivor")
            assert done.output_file_id is not None
            finished = [json.loads(line)["custom_id"] for line in b.files.content(done.output_file_id).text.splitlines()]
            resumed = list(b.responses.retrieve(streamed_id, stream=True, starting_after=0))  # type: ignore[call-overload]
            answers = [wait_until(lambda r=r: (got := b.responses.retrieve(r.id)).status == "completed" and got,
                                  timeout=60, what=f"{r.id} completed by the survivor") for r in background]
            items = list(b.conversations.items.list(conversation.id, order="asc"))
        # Read while the survivor runs (its writer flushes every 0.25 s), not after its shutdown's flush.
        ran_again = sorted([streamed_id, *(r.id for r in background)])
        taken = wait_until(lambda: (found := [row for row in rows_of(shared_db, key_id)
                                              if (row["extra"] or {}).get("taken_over")])
                           and len(found) >= len(ran_again) and found, timeout=30,
                           what="the survivor's rows of the runs it took over")
    asked = [m["content"] for body in upstreams[0].stats()["bodies"] for m in body.get("messages", [])]
    assert finished == [f"q{i}" for i in range(6)]
    assert [asked.count(f"line {i}") for i in range(4)] == [1, 1, 1, 1]  # the finished lines, served once
    assert [asked.count(f"[delay:3] [words:{n}] run {n}") for n in (2, 3, 4)] == [2, 2, 2]  # cut, served again
    assert [len(r.output_text.split()) for r in answers] == [2, 3]
    assert [(r.id, r.created_at) for r in answers] == [(r.id, r.created_at) for r in background]
    assert [e.type for e in resumed] == ["response.completed"]
    assert len(resumed[0].response.output_text.split()) == 4  # type: ignore[union-attr]
    assert [item.type for item in items] == ["message", "message"]  # the turn's input and answer, once
    assert sorted(row["extra"]["taken_over"] for row in taken) == ran_again


def test_a_key_revoked_on_one_gateway_is_refused_by_the_other_at_once(replicas: tuple, shared_db: str,
                                                                      key_ids: list[str]) -> None:
    """The other gateway has the key in its cache (10 s); Redis tells it of the revocation at once."""
    (one, two), _ = replicas
    key_id, secret = KeyStore(shared_db).create("leaked")
    key_ids.append(key_id)
    assert ask(two.url, secret).status_code == 200  # cached there now
    revoked = httpx.delete(f"{one.url}/v1/keys/{key_id}", headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
    assert revoked.status_code == 200, revoked.text
    started = time.monotonic()
    wait_until(lambda: ask(two.url, secret).status_code == 401, timeout=3, what="the other gateway refusing the key")
    assert time.monotonic() - started < 3  # well inside the 10 s its cache would have kept the key
