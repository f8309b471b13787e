"""The audio and image endpoints under the gateway's rules, over a real socket: keys' model lists and budgets
(held before the call, so an exhausted budget is refused with no upstream call; settled with the units' cost),
bad bodies and oversized uploads as 4xx in OpenAI's shape naming the field (a 413 before the upload is read
whole, declared or chunked), upstream errors passed through with their status, and OpenAI's usage reports
(audio_transcriptions' seconds, audio_speeches' characters, images' images) and costs over the usage rollup,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from storage.keys import KeyStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.media_helpers import (
    CHARACTER_PRICE,
    IMAGE_PRICE,
    SECOND_PRICE,
    media_models,
    wav_bytes,
    wav_duration,
)
from tests.gateway.upstream import UpstreamProcess

UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, _ = upstream_processes
    tmp = tmp_path_factory.mktemp("media-limits")
    raw = gateway_config(tmp, [*media_models(a.api_base), model_entry("chat", a.api_base)],
                         server={"max_upload_bytes": UPLOAD_LIMIT})
    with running_gateway(raw) as g:
        yield g


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def test_bad_bodies_are_4xx_naming_the_field(gw: Gateway, upstreams: tuple) -> None:
    audio = wav_bytes(1_000)
    cases = [  # (path, how it is sent, status, param or code)
        ("/v1/audio/transcriptions", {"files": {"model": (None, "whisper")}}, 400, "file"),
        ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", audio)}}, 400, "model"),
        ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", b"")}, "data": {"model": "whisper"}}, 400, "file"),
        ("/v1/audio/transcriptions", {"json": {"model": "whisper"}}, 400, "invalid_content_type"),
        ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", audio)}, "data": {"model": "whisper",
                                                                                    "stream": "true"}}, 400, "stream"),
        ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", audio)}, "data": {"model": "whisper",
                                                                                    "response_format": "xml"}},
         400, "response_format"),
        ("/v1/audio/translations", {"files": {"file": ("a.wav", audio)}, "data": {"model": "whisper",
                                                                                  "language": "de"}}, 400, "language"),
        ("/v1/audio/transcriptions", {"content": b"--x\r\nbroken", "headers": {
            "content-type": "multipart/form-data; boundary=x"}}, 400, "file"),  # no part whole: no file
        ("/v1/audio/speech", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         "invalid_json"),
        ("/v1/audio/speech", {"json": {"model": "tts", "voice": "alloy"}}, 400, "input"),
        ("/v1/audio/speech", {"json": {"model": "tts", "input": "hi"}}, 400, "voice"),
        ("/v1/audio/speech", {"json": {"input": "hi", "voice": "alloy"}}, 400, "model"),
        ("/v1/audio/speech", {"json": {"model": "tts", "input": "hi", "voice": "alloy", "response_format": "ogg"}},
         400, "response_format"),
        ("/v1/audio/speech", {"json": {"model": "tts", "input": "hi", "voice": "alloy", "speed": 9}}, 400, "speed"),
        ("/v1/audio/speech", {"json": {"model": "tts", "input": "x" * 4097, "voice": "alloy"}}, 400, "input"),
        ("/v1/images/generations", {"json": {"model": "img"}}, 400, "prompt"),
        ("/v1/images/generations", {"json": {"model": "img", "prompt": "x", "n": 0}}, 400, "n"),
        ("/v1/images/generations", {"json": {"model": "img", "prompt": "x", "size": "big"}}, 400, "size"),
        ("/v1/images/generations", {"json": ["a list"]}, 400, None),
        ("/v1/images/edits", {"files": {"image": ("a.png", b"png")}, "data": {"model": "img"}}, 400, "prompt"),
        ("/v1/images/edits", {"data": {"model": "img", "prompt": "x"}}, 400, "invalid_content_type"),
        ("/v1/images/edits", {"files": {"mask": ("m.png", b"png")}, "data": {"model": "img", "prompt": "x"}}, 400,
         "image"),
        ("/v1/images/edits", {"files": {"image": ("a.png", b"")}, "data": {"model": "img", "prompt": "x"}}, 400,
         "image"),
        ("/v1/images/edits", {"files": [("image", ("a.png", b"png")), ("mask", ("m.png", b"1")), ("mask", ("n.png", b"2"))],
                              "data": {"model": "img", "prompt": "x"}}, 400, "mask"),
        ("/v1/images/edits", {"files": [("image[]", ("a.png", b"png"))] * 17, "data": {"model": "img", "prompt": "x"}},
         400, "image"),
        ("/v1/images/edits", {"files": {"image": ("a.png", b"png")}, "data": {"model": "img", "prompt": "x", "n": "11"}},
         400, "n"),
        ("/v1/images/edits", {"files": {"image": ("a.png", b"png")}, "data": {"model": "img", "prompt": "x",
                                                                               "size": "huge"}}, 400, "size"),
        ("/v1/images/edits", {"files": {"image": ("a.png", b"png")}, "data": {"model": "tts", "prompt": "x"}}, 400,
         "model"),
    ]
    with gw.http() as http:
        for path, sent, status, field in cases:
            response = http.post(path, **sent)  # type: ignore[arg-type]
            assert response.status_code == status, (path, sent, response.text)
            error = _error(response)
            assert field is None or field in (error["param"], error["code"]), (path, error)
    assert sum(u.stats()["requests"] for u in upstreams) == 0


def test_an_oversized_upload_is_a_413_before_it_is_read(gw: Gateway, upstreams: tuple) -> None:
    big = wav_bytes(UPLOAD_LIMIT + 50_000)

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut as it passes the limit
        boundary = b"--b\r\n"
        yield boundary + b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for start in range(0, len(big), 65_536):
            yield big[start:start + 65_536]
        yield b"\r\n--b--\r\n"

    with gw.openai() as client, gw.http() as http:
        with pytest.raises(openai.APIStatusError) as declared:
            client.audio.transcriptions.create(model="whisper", file=("a.wav", big))
        streamed = http.post("/v1/audio/transcriptions", content=chunked(),
                             headers={"content-type": "multipart/form-data; boundary=b"})
        fits = client.audio.transcriptions.create(model="whisper", file=("a.wav", wav_bytes(UPLOAD_LIMIT - 1_000)))
    assert declared.value.status_code == 413
    assert declared.value.body["code"] == "upload_too_large"  # type: ignore[index]
    assert streamed.status_code == 413 and _error(streamed)["param"] == "file"
    assert fits.text.startswith("heard ")
    assert upstreams[0].stats()["requests"] == 1  # only the one that fit


def test_upstream_errors_pass_through_with_their_status(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.speech.create(model="tts", input="say [fail:400]", voice="alloy")
        with pytest.raises(openai.InternalServerError) as broken:
            client.images.generate(model="img", prompt="draw [fail:503]")
        with pytest.raises(openai.RateLimitError) as limited:
            client.audio.transcriptions.create(model="whisper", file=("a.wav", wav_bytes(2_000)),
                                               prompt="[fail:429]")
    assert refused.value.message.endswith("injected 400 from a")
    assert broken.value.status_code == 503 and "injected 503" in broken.value.message
    assert "injected 429" in limited.value.message
    rows = gw.rows(gw.request_ids[-3:])
    assert sorted((r["endpoint"], r["http_status"]) for r in rows) == [("image", 503), ("speech", 400),
                                                                       ("transcription", 429)]


def test_keys_models_and_budgets_apply(upstreams: tuple, tmp_path: Path) -> None:
    a = upstreams[0]
    raw = gateway_config(tmp_path, media_models(a.api_base), auth={"require_keys": True, "master_key": "master"})
    text = "x" * 500  # 500 characters: one speech costs 0.01
    cost = len(text) * CHARACTER_PRICE
    with running_gateway(raw) as gateway:
        keys = KeyStore(gateway.storage_url)
        budget_id, budget = keys.create("budget", budget_usd=1.5 * cost, models=["tts", "img"])
        with gateway.openai() as anonymous, gateway.openai(api_key=budget) as client:
            with pytest.raises(openai.AuthenticationError):
                anonymous.audio.speech.create(model="tts", input=text, voice="alloy")
            with pytest.raises(openai.PermissionDeniedError) as other:
                client.audio.transcriptions.create(model="whisper", file=("a.wav", wav_bytes(1_000)))
            client.audio.speech.create(model="tts", input=text, voice="alloy").read()
            client.audio.speech.create(model="tts", input=text, voice="alloy").read()  # half a speech left
            with pytest.raises(openai.RateLimitError) as over:
                client.audio.speech.create(model="tts", input=text, voice="alloy")
            with pytest.raises(openai.RateLimitError):
                client.images.generate(model="img", prompt="x")
        wait_until(lambda: keys.get(budget_id).spent_usd == pytest.approx(2 * cost),  # type: ignore[union-attr]
                   what="the key's spend")
    assert isinstance(other.value.body, dict) and other.value.body["param"] == "model"
    assert isinstance(over.value.body, dict) and over.value.body["code"] == "budget_exceeded"
    assert a.stats()["requests"] == 2  # the refused ones never reached the upstream


def test_a_speech_in_flight_holds_its_cost_of_the_budget(upstreams: tuple, tmp_path: Path) -> None:
    """The hold is taken before the call: while one speech is in flight its characters' cost is held, and a
    second that the budget could not pay beside it is refused before reaching the upstream."""
    a = upstreams[0]
    raw = gateway_config(tmp_path, media_models(a.api_base), auth={"require_keys": True, "master_key": "master"})
    slow = "wait for it [delay:1.5]"
    with running_gateway(raw) as gateway:
        _, key = KeyStore(gateway.storage_url).create("one-at-a-time", budget_usd=0.8 * len(slow) * CHARACTER_PRICE)
        with gateway.openai(api_key=key) as client, ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: client.audio.speech.create(model="tts", input=slow, voice="alloy").read())
            wait_until(lambda: a.stats()["requests"] == 1, what="the first speech reached the upstream")
            with pytest.raises(openai.RateLimitError) as second:
                client.audio.speech.create(model="tts", input=slow, voice="alloy")
            assert len(first.result(timeout=30)) == 1000 * len(slow)
    assert isinstance(second.value.body, dict) and second.value.body["code"] == "budget_held"
    assert a.stats()["requests"] == 1


def test_usage_reports_and_costs(upstreams: tuple, tmp_path: Path, storage_url: str) -> None:
    """Over the usage rollup, on SQLite and PostgreSQL: each report counts its endpoints' units and requests."""
    start = int(time.time()) - 3_600
    a = upstreams[0]
    raw = gateway_config(tmp_path, media_models(a.api_base), storage_url=storage_url)
    audio = wav_bytes(96_044)  # 3 seconds
    with running_gateway(raw) as gateway:
        with gateway.openai() as client:
            client.audio.transcriptions.create(model="whisper", file=("a.wav", audio))
            client.audio.translations.create(model="whisper", file=("a.wav", audio))
            client.audio.speech.create(model="tts", input="twelve chars", voice="alloy").read()
            client.images.generate(model="img", prompt="x", n=3, size="256x256")
            client.images.edit(model="img", image=("a.png", b"png"), prompt="y", n=2, size="256x256")
        gateway.flush()
        with gateway.http() as http:
            def report(name: str, **params: str) -> list[dict]:
                page = http.get(f"/v1/organization/usage/{name}", params={"start_time": start, **params})
                assert page.status_code == 200, page.text
                return [r for bucket in page.json()["data"] for r in bucket["results"]]

            transcriptions = report("audio_transcriptions", **{"group_by[]": "model"})
            speeches = report("audio_speeches")
            images = report("images", **{"group_by[]": "size"})
            completions = report("completions")
            costs = report("../costs", **{"group_by[]": "line_item"})
            refused = http.get("/v1/organization/usage/images", params={"start_time": start, "sizes[]": "256x256"})
    seconds = round(wav_duration(audio))
    assert [(r["object"], r["model"], r["seconds"], r["num_model_requests"]) for r in transcriptions] == [
        ("organization.usage.audio_transcriptions.result", "whisper", 2 * seconds, 2)]
    assert [(r["characters"], r["num_model_requests"]) for r in speeches] == [(12, 1)]
    # Generations and edits alike (OpenAI's `source` tells them apart; the rollup does not keep it).
    assert [(r["images"], r["num_model_requests"], r["size"], r["source"]) for r in images] == [(5, 2, None, None)]
    assert completions == []
    by_model = {r["line_item"]: r["amount"]["value"] for r in costs}
    assert by_model == {"whisper": pytest.approx(2 * wav_duration(audio) * SECOND_PRICE),
                        "tts": pytest.approx(12 * CHARACTER_PRICE), "img": pytest.approx(5 * IMAGE_PRICE)}
    assert refused.status_code == 400 and _error(refused)["param"] == "sizes"
