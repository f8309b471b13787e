"""OpenAI's Videos API over a real socket with the openai SDK (`client.videos.create_and_poll`, `retrieve`,
`list`, `download_content`, `remix`, `delete`), answered by models marked `mode: video_generation` on the fake
upstream processes (tests/gateway/upstream_videos.py: jobs that go queued, in_progress, completed over three
polls, content derived from the prompt and the reference image), over the direct transport and through
litellm: the bytes intact, each key's own jobs (another's a 404), list pages, remix and delete on the
deployment that holds the job, the bill when a job is first seen completed (in its create's answer too, or by
the poll a delete makes) and the refund when it fails or is deleted while it runs, a create retried on the
other deployment, an upstream failing a later call, the database away, bad bodies."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from storage.keys import KeyStore
from storage.videos import VideoStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.upstream import UpstreamProcess
from tests.gateway.upstream_videos import video_bytes

SECOND_PRICE = 0.1  # $ a second of video, sora-2's
MASTER = "sk-master"


def video_entry(name: str, api_base: str, **params: str) -> dict:
    return {"model_name": name,
            "litellm_params": {"model": "openai/sora-2", "api_base": api_base, "api_key": "k", **params},
            "model_info": {"mode": "video_generation", "output_cost_per_video_per_second": SECOND_PRICE}}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [video_entry("sora", a.api_base), video_entry("sora", b.api_base), video_entry("sora-a", a.api_base),
              video_entry("sora-litellm", a.api_base, transport="litellm"), model_entry("chat", a.api_base)]
    tmp = tmp_path_factory.mktemp("videos")
    with running_gateway(gateway_config(tmp, models, auth={"require_keys": True, "master_key": MASTER})) as g:
        yield g


def _key(gw: Gateway, name: str, budget_usd: float | None = None) -> str:
    return KeyStore(gw.storage_url).create(name, budget_usd=budget_usd)[1]


def _video_row(gw: Gateway, video_id: str) -> dict:
    rows = [r for r in gw.rows() if r["endpoint"] == "video" and r["extra"].get("video_id") == video_id]
    assert len(rows) == 1, f"expected one outcome row for {video_id}, found {len(rows)}"
    return rows[0]


@pytest.mark.parametrize("model", ["sora-a", "sora-litellm"])
def test_create_and_poll_then_the_content_arrives_intact_and_is_billed_once(
        gw: Gateway, upstreams: tuple, model: str) -> None:
    reference, prompt = b"\x89PNG a reference frame" * 50, f"a fox in the snow, {model}"
    with gw.openai(_key(gw, f"poll-{model}")) as client:
        video = client.videos.create_and_poll(model=model, prompt=prompt, seconds="8", size="1280x720",
                                              input_reference=("ref.png", reference, "image/png"), poll_interval_ms=10)
        assert (video.status, video.progress, video.seconds, video.size) == ("completed", 100, "8", "1280x720")
        assert client.videos.download_content(video.id).read() == video_bytes(prompt, reference)
        assert client.videos.download_content(video.id, variant="thumbnail").read() == \
            video_bytes(prompt, reference, "thumbnail")
        upstreams[0].set_fail(500)  # an ended job is answered as kept: its upstream is not asked again
        assert client.videos.retrieve(video.id).status == "completed"
        upstreams[0].set_fail(None)
    sent = upstreams[0].stats()["bodies"][0]
    assert sent["input_reference"]["bytes"] == len(reference) and sent["prompt"] == prompt
    row = _video_row(gw, video.id)
    assert (row["model"], row["status"], row["extra"]["seconds"], row["extra"]["size"]) == (model, "ok", 8, "1280x720")
    assert row["extra"]["status"] == "completed" and row["cost_usd"] == pytest.approx(8 * SECOND_PRICE)


def test_a_key_lists_its_own_videos_by_page_and_another_keys_are_404(gw: Gateway, upstreams: tuple) -> None:
    mine, theirs = _key(gw, "lister"), _key(gw, "other")
    with gw.openai(mine) as client, gw.openai(theirs) as other:
        made = [client.videos.create(model="sora-a", prompt=f"clip {i}").id for i in range(3)]
        their_id = other.videos.create(model="sora-a", prompt="theirs").id
        first = client.videos.list(limit=2)
        assert [v.id for v in first.data] == made[:0:-1] and first.has_more
        assert [v.id for v in client.videos.list(limit=2)] == made[::-1]  # the SDK pages on by `after`
        assert [v.id for v in client.videos.list(order="asc")] == made
        assert [v.id for v in other.videos.list()] == [their_id]
        for call in (lambda: other.videos.retrieve(made[0]), lambda: other.videos.delete(made[0]),
                     lambda: other.videos.download_content(made[0]), lambda: other.videos.remix(made[0], prompt="x")):
            with pytest.raises(openai.NotFoundError) as refused:
                call()
            assert refused.value.code == "video_not_found"
        assert client.videos.retrieve(made[0]).id == made[0]


def test_remix_and_delete_reach_the_deployment_that_holds_the_job(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai(_key(gw, "remixer")) as client:
        source = client.videos.create_and_poll(model="sora", prompt="a city at dusk", seconds="4", poll_interval_ms=10)
        remixed = client.videos.remix(source.id, prompt="the same city at dawn")
        assert remixed.remixed_from_video_id == source.id and remixed.id != source.id
        done = client.videos.poll(remixed.id, poll_interval_ms=10)
        assert client.videos.download_content(done.id).read() == video_bytes("the same city at dawn")
        holder = _video_row(gw, source.id)["deployment"]
        assert _video_row(gw, remixed.id)["deployment"] == holder  # never another deployment
        assert _video_row(gw, remixed.id)["cost_usd"] == pytest.approx(4 * SECOND_PRICE)
        deleted = client.videos.delete(source.id)
        assert deleted.deleted and deleted.id == source.id
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(source.id)
        assert source.id not in [v.id for v in client.videos.list()]


def test_a_hold_is_kept_until_the_job_ends_a_failure_refunds_it_and_a_completion_bills_it(
        gw: Gateway, upstreams: tuple) -> None:
    with gw.openai(_key(gw, "budgeted", budget_usd=1.0)) as client:  # a 12-second video holds $1.20
        failing = client.videos.create(model="sora-a", prompt="[job:fail] a storm", seconds="12")
        with pytest.raises(openai.RateLimitError) as refused:  # the first one's hold is still taken
            client.videos.create(model="sora-a", prompt="another", seconds="12")
        assert refused.value.code == "budget_held"
        assert client.videos.poll(failing.id, poll_interval_ms=10).status == "failed"
        row = _video_row(gw, failing.id)
        assert (row["status"], row["cost_usd"], row["extra"]["status"]) == ("error", 0.0, "failed")
        made = client.videos.create_and_poll(model="sora-a", prompt="calm sea", seconds="12", poll_interval_ms=10)
        assert made.status == "completed"  # the failed one's hold came back
        assert _video_row(gw, made.id)["cost_usd"] == pytest.approx(12 * SECOND_PRICE)
        with pytest.raises(openai.RateLimitError) as spent:  # $1.20 spent of $1
            client.videos.create(model="sora-a", prompt="one more", seconds="4")
        assert spent.value.code == "budget_exceeded"


def test_a_create_is_retried_on_the_other_deployment_and_a_later_failure_leaves_the_job(
        gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    with gw.openai(_key(gw, "faults")) as client:
        with pytest.raises(openai.InternalServerError):  # both refuse: nothing made
            client.videos.create(model="sora", prompt="[fail:503] never made")
        made = [client.videos.create(model="sora", prompt=f"[fail:503@a] clip {i}") for i in range(3)]
        assert all(v.id.startswith("video_b") for v in made)  # a refused each: b made them
        b.set_fail(500)
        with pytest.raises(openai.APIStatusError) as failed:
            client.videos.retrieve(made[0].id)
        assert failed.value.status_code == 502 and "injected 500 from b" in failed.value.message
        assert VideoStore(gw.storage_url).get(made[0].id)["status"] == "queued"  # type: ignore[index]
        b.set_fail(None)
        assert client.videos.retrieve(made[0].id).status == "in_progress"


def test_the_database_away_is_a_503_before_any_upstream_is_asked(gw: Gateway, upstreams: tuple) -> None:
    assert gw.state is not None
    kept, gw.state.video_store = gw.state.video_store, VideoStore("postgresql+psycopg://pitstop@127.0.0.1:9/none")
    try:
        with gw.openai(_key(gw, "no-db")) as client, pytest.raises(openai.InternalServerError) as refused:
            client.videos.create(model="sora-a", prompt="kept nowhere")
    finally:
        gw.state.video_store = kept
    assert refused.value.status_code == 503 and refused.value.code == "video_store_unavailable"
    assert upstreams[0].stats()["requests"] == 0


class _PutFails(VideoStore):
    """The database answers the create's ping, then goes away before the job's row is written."""

    def __init__(self, kept: VideoStore) -> None:
        self.__dict__.update(kept.__dict__)
        self.puts, self.ids = 0, set()

    def put(self, row: dict) -> None:
        self.puts += 1
        self.ids.add(row["id"])
        raise ConnectionError("server closed the connection unexpectedly")


@pytest.mark.parametrize(("model", "cancelled"), [("sora-a", True), ("sora-litellm", False)])
def test_a_job_the_database_could_not_keep_is_cancelled_upstream_and_the_create_is_a_503(
        gw: Gateway, upstreams: tuple, model: str, cancelled: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert gw.state is not None
    caplog.set_level(logging.WARNING, logger="gateway.videos")
    kept = gw.state.video_store
    gw.state.video_store = failing = _PutFails(kept)
    try:
        with gw.openai(_key(gw, f"lost-row-{model}")) as client, pytest.raises(openai.InternalServerError) as refused:
            client.videos.create(model=model, prompt="made, then not kept")
    finally:
        gw.state.video_store = kept
    assert refused.value.status_code == 503 and refused.value.code == "video_store_unavailable"
    assert failing.puts == 3  # retried before giving up
    assert len(failing.ids) == 1 and upstreams[0].stats()["requests"] == 1  # one job, made once
    video_id = failing.ids.pop()
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.videos" and video_id in r.getMessage()]
    if cancelled:  # deleted where it was made
        there = httpx.get(f"{upstreams[0].api_base}/videos/{video_id}", headers={"Authorization": "Bearer k"})
        assert there.status_code == 404 and "was cancelled there" in said[0]
    else:  # litellm has no video delete: left for an operator, its id logged
        assert "nor cancelled there" in said[0]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "sora-a", "prompt": "x", "seconds": "5"}, 400, "seconds"),
    ({"model": "sora-a", "prompt": "x", "size": "640x480"}, 400, "size"),
    ({"model": "sora-a", "prompt": ""}, 400, "prompt"),
    ({"model": "chat", "prompt": "x"}, 400, "model"),
    ({"model": "nope", "prompt": "x"}, 404, "model"),
])
def test_bad_bodies_are_openai_shaped_4xx(gw: Gateway, upstreams: tuple, body: dict, status: int, param: str) -> None:
    with gw.http() as http:
        answer = http.post("/v1/videos", json=body, headers={"authorization": f"Bearer {_key(gw, 'bad')}"})
    assert answer.status_code == status and answer.json()["error"]["param"] == param
    if body["model"] == "chat":
        assert "/v1/videos" in answer.json()["error"]["message"]


def test_json_creates_and_bad_variants(gw: Gateway, upstreams: tuple) -> None:
    headers = {"authorization": f"Bearer {_key(gw, 'json')}"}
    with gw.http() as http:
        made = http.post("/v1/videos", json={"model": "sora-a", "prompt": "plain json", "seconds": 4}, headers=headers)
        assert made.status_code == 200 and made.json()["seconds"] == "4"
        assert upstreams[0].stats()["bodies"][-1] == {"model": "sora-2", "prompt": "plain json", "seconds": "4",
                                                      "size": "720x1280"}
        wrong = http.get(f"/v1/videos/{made.json()['id']}/content", params={"variant": "gif"}, headers=headers)
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "variant"
        early = http.get(f"/v1/videos/{made.json()['id']}/content", headers=headers)  # not made yet: the upstream's 400
        assert early.status_code == 400 and "not completed" in early.json()["error"]["message"]
        deleted = http.delete(f"/v1/videos/{made.json()['id']}", headers=headers)
        assert deleted.status_code == 200
    row = _video_row(gw, made.json()["id"])  # deleted while it ran: cancelled unmade, not billed
    assert row["extra"]["status"] == "deleted" and row["cost_usd"] == 0.0


def test_litellm_has_no_video_delete(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai(_key(gw, "litellm-delete")) as client:
        made = client.videos.create(model="sora-litellm", prompt="kept")
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.delete(made.id)
    assert "transport: direct" in refused.value.message


def test_the_costs_api_and_the_metrics_count_videos_under_their_model(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai(_key(gw, "costs")) as client:
        client.videos.create_and_poll(model="sora-a", prompt="counted", seconds="8", poll_interval_ms=10)
    billed = sum(r["cost_usd"] for r in gw.rows() if r["endpoint"] == "video" and r["model"] == "sora-a")
    with gw.openai(MASTER) as admin:
        costs = admin.get("/organization/costs", cast_to=object, options={"params": {
            "start_time": int(time.time()) - 3600, "group_by[]": "line_item"}})
    lines = [r for bucket in costs["data"] for r in bucket["results"] if r["line_item"] == "sora-a"]  # type: ignore[index]
    assert billed >= 8 * SECOND_PRICE and sum(r["amount"]["value"] for r in lines) == pytest.approx(billed)
    assert gw.state is not None  # and in the metrics, as every request's cost is
    cost = gw.state.metrics.cost.labels("", "sora-a")._value.get()  # type: ignore[attr-defined]
    assert cost == pytest.approx(billed)


def _spent(gw: Gateway, secret: str, usd: float) -> None:
    keys = KeyStore(gw.storage_url)
    wait_until(lambda: keys.lookup(secret).spent_usd == pytest.approx(usd),  # type: ignore[union-attr]
               what=f"the key's spend at ${usd}")


def test_a_job_deleted_while_running_is_refunded_and_one_that_ended_unseen_is_billed(
        gw: Gateway, upstreams: tuple) -> None:
    secret = _key(gw, "deletes", budget_usd=1.0)
    with gw.openai(secret) as client:  # an 8-second video holds $0.80 of $1
        running = client.videos.create(model="sora-a", prompt="cancelled early", seconds="8")
        client.videos.delete(running.id)
        row = _video_row(gw, running.id)
        assert (row["status"], row["cost_usd"], row["extra"]["status"]) == ("ok", 0.0, "deleted")
        _spent(gw, secret, 0.0)  # its hold given back whole
        unseen = client.videos.create(model="sora-a", prompt="made, never polled here", seconds="8")
        for _ in range(3):  # it ends at its upstream without the gateway polling it
            httpx.get(f"{upstreams[0].api_base}/videos/{unseen.id}").raise_for_status()
        client.videos.delete(unseen.id)
        row = _video_row(gw, unseen.id)  # the delete asked first: made, so billed as made
        assert (row["cost_usd"], row["extra"]["status"]) == (pytest.approx(8 * SECOND_PRICE), "completed")
        _spent(gw, secret, 8 * SECOND_PRICE)
        assert VideoStore(gw.storage_url).get(unseen.id) is None


def test_a_video_downloaded_before_the_gateway_saw_it_end_is_billed_then(gw: Gateway, upstreams: tuple) -> None:
    secret = _key(gw, "download-unpolled", budget_usd=1.0)
    with gw.openai(secret) as client:
        made = client.videos.create(model="sora-a", prompt="fetched, never polled", seconds="4")
        for _ in range(3):  # it ends at its upstream, unseen
            httpx.get(f"{upstreams[0].api_base}/videos/{made.id}").raise_for_status()
        assert client.videos.download_content(made.id).read() == video_bytes("fetched, never polled")
        row = _video_row(gw, made.id)  # billed before its bytes went out, not left for its hold to lapse
        assert (row["cost_usd"], row["extra"]["status"]) == (pytest.approx(4 * SECOND_PRICE), "completed")
        client.videos.download_content(made.id, variant="thumbnail").read()  # ended: no poll, no second bill
        client.videos.delete(made.id)
    _spent(gw, secret, 4 * SECOND_PRICE)
    assert _video_row(gw, made.id)["cost_usd"] == pytest.approx(4 * SECOND_PRICE)


def test_a_job_completed_in_its_create_answer_is_billed_once_and_kept_once(gw: Gateway, upstreams: tuple) -> None:
    secret = _key(gw, "made-at-once", budget_usd=1.0)
    with gw.openai(secret) as client:
        made = client.videos.create(model="sora-a", prompt="[job:done] a blink", seconds="8")
        assert (made.status, made.progress) == ("completed", 100)
        row = VideoStore(gw.storage_url).get(made.id)
        assert row is not None and row["status"] == "completed" and row["video"]["progress"] == 100
        assert [v.id for v in client.videos.list()] == [made.id]  # one job row
        upstreams[0].set_fail(500)  # kept as ended: answered without its upstream, not billed again
        assert client.videos.retrieve(made.id).status == "completed"
        upstreams[0].set_fail(None)
        client.videos.delete(made.id)  # deleting a billed job bills nothing more
    row = _video_row(gw, made.id)  # one outcome row
    assert (row["cost_usd"], row["extra"]["status"]) == (pytest.approx(8 * SECOND_PRICE), "completed")
    _spent(gw, secret, 8 * SECOND_PRICE)
