"""OpenAI's audio and image endpoints over a real socket with the openai SDK (`client.audio.transcriptions`,
`.translations`, `.speech`, `client.images.generate`, `.edit`), answered by models marked with litellm's modes on the
fake upstream processes (tests/gateway/upstream_media.py: answers derived from what was sent), over the
direct transport and through litellm: the file arriving intact, each answer passed back, speech's audio
byte for byte, the outcome rows with their units and cost at the configured unit prices, a failing
deployment retried on the other, wrong-endpoint models, and the metrics."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.media_helpers import (
    CHARACTER_PRICE,
    IMAGE_PRICE,
    SECOND_PRICE,
    media_entry,
    media_models,
    wav_bytes,
    wav_duration,
)
from tests.gateway.upstream import UpstreamProcess
from tests.gateway.upstream_media import edited_b64, image_b64, image_url, speech_audio, transcript_text


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [*media_models(a.api_base), media_entry("whisper", "audio_transcription", b.api_base, "whisper-1"),
              *media_models(a.api_base, "-litellm"), model_entry("chat", a.api_base)]
    for entry in models[4:7]:
        entry["litellm_params"]["transport"] = "litellm"
    tmp = tmp_path_factory.mktemp("media")
    storage = {"url": f"sqlite:///{tmp / 'gateway.db'}", "spool_path": str(tmp / "spool.jsonl"), "store_text": True}
    with running_gateway(gateway_config(tmp, models, storage=storage)) as g:
        yield g


def _deployment_of(row: dict) -> str:
    return row["deployment"].split("#")[0]


@pytest.mark.parametrize("model", ["whisper", "whisper-litellm"])
def test_a_transcription_arrives_intact_and_is_billed_by_the_second(gw: Gateway, upstreams: tuple, model: str) -> None:
    audio = wav_bytes(200_000, seed=3)
    with gw.openai() as client:
        answer = client.audio.transcriptions.with_raw_response.create(model=model, file=("talk.wav", audio, "audio/wav"))
    body = answer.parse()
    row = gw.row(answer.headers["x-pitstop-request-id"])
    served_by = "a" if row["deployment"].endswith("#0") else "b"
    assert body.text == transcript_text(audio, served_by)  # the bytes the upstream read are the file's
    assert (row["endpoint"], row["status"], row["model"]) == ("transcription", "ok", model)
    assert row["extra"]["seconds"] == pytest.approx(wav_duration(audio))  # from the WAV's header
    assert row["cost_usd"] == pytest.approx(wav_duration(audio) * SECOND_PRICE)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (0, 0) and "usage_estimated" not in row["extra"]


def test_transcript_formats_pass_through_and_verbose_json_gives_the_duration(gw: Gateway, upstreams: tuple) -> None:
    audio = b"ID3 not a wav, an mp3's worth of bytes" * 1000  # no header to read a duration from
    with gw.openai() as client:
        text = client.audio.transcriptions.create(model="whisper", file=("a.mp3", audio), response_format="text")
        srt = client.audio.transcriptions.create(model="whisper", file=("a.mp3", audio), response_format="srt")
        verbose = client.audio.transcriptions.with_raw_response.create(
            model="whisper", file=("a.mp3", audio), response_format="verbose_json", language="en",
            timestamp_granularities=["segment"], temperature=0.2, prompt="names: Pitstop")
    assert re.fullmatch(r"heard 38000 bytes sha256 [0-9a-f]{16} from-[ab]\n?", text)
    assert srt.startswith("1\n00:00:00.000 --> ") and "heard 38000 bytes" in srt
    parsed = verbose.parse()
    assert parsed.duration == pytest.approx(len(audio) / 32_000)
    sent = [b for u in upstreams for b in u.stats()["bodies"] if b.get("response_format") == "verbose_json"]
    assert sent == [{"model": "whisper-1", "language": "en", "prompt": "names: Pitstop", "response_format": "verbose_json",
                     "temperature": "0.2", "timestamp_granularities[]": "segment",
                     "file": {"filename": "a.mp3", "bytes": len(audio), "content_type": "audio/mpeg"}}]
    row = gw.row(verbose.headers["x-pitstop-request-id"])
    assert row["extra"]["seconds"] == pytest.approx(len(audio) / 32_000)  # the provider's duration
    assert "duration_estimated" not in row["extra"]
    assert row["cost_usd"] == pytest.approx(len(audio) / 32_000 * SECOND_PRICE)
    estimated = gw.row(gw.request_ids[-3])  # the text one: no duration anywhere, estimated at 128 kbit/s
    assert estimated["extra"]["duration_estimated"] is True
    assert estimated["extra"]["seconds"] == pytest.approx(len(audio) / 16_000)


def test_a_translation(gw: Gateway, upstreams: tuple) -> None:
    audio = wav_bytes(50_000, seed=5)
    with gw.openai() as client:
        answer = client.audio.translations.with_raw_response.create(model="whisper", file=("x.wav", audio))
        litellm = client.audio.translations.with_raw_response.create
        with pytest.raises(openai.BadRequestError) as refused:
            litellm(model="whisper-litellm", file=("x.wav", audio))
    assert answer.parse().text.startswith(f"translated {len(audio)} bytes")
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["cost_usd"]) == ("translation", pytest.approx(wav_duration(audio) * SECOND_PRICE))
    assert "transport: direct" in refused.value.message


@pytest.mark.parametrize("model", ["tts", "tts-litellm"])
def test_speech_is_the_upstreams_audio_byte_for_byte(gw: Gateway, upstreams: tuple, model: str) -> None:
    text = "Hello from the gateway, " * 9  # 216 characters: 216,000 bytes of audio
    with gw.openai() as client, client.audio.speech.with_streaming_response.create(
            model=model, input=text, voice="alloy", response_format="wav", speed=1.5) as answer:
        audio = answer.read()
        assert answer.headers["content-type"] == "audio/wav"
        request_id = answer.headers["x-pitstop-request-id"]
    assert audio == speech_audio(text)
    sent = upstreams[0].stats()["bodies"][-1]
    assert sent["input"] == text and sent["voice"] == "alloy" and sent["speed"] == 1.5 and sent["model"] == "tts-1"
    row = gw.row(request_id)
    assert (row["endpoint"], row["status"], row["model"]) == ("speech", "ok", model)
    assert row["extra"]["characters"] == len(text) and row["extra"]["audio_bytes"] == len(audio)
    assert row["cost_usd"] == pytest.approx(len(text) * CHARACTER_PRICE)
    assert row["prompt"] == text  # store_text keeps what was spoken


def test_images_as_b64_and_urls(gw: Gateway, upstreams: tuple) -> None:
    prompt = "a pit stop at dusk"
    with gw.openai() as client:
        b64 = client.images.with_raw_response.generate(model="img", prompt=prompt, n=2, size="1024x1024",
                                                         response_format="b64_json", quality="hd")
        urls = client.images.generate(model="img", prompt=prompt, response_format="url")
        through_litellm = client.images.with_raw_response.generate(model="img-litellm", prompt=prompt, n=3,
                                                                     size="512x512")
    images = b64.parse().data
    assert images is not None and [i.b64_json for i in images] == [image_b64(prompt, 0), image_b64(prompt, 1)]
    assert base64.b64decode(images[0].b64_json or "")  # decodable
    assert urls.data is not None and [i.url for i in urls.data] == [image_url(prompt, 0)]
    assert [i.url for i in through_litellm.parse().data or ()] == [image_url(prompt, i) for i in range(3)]
    row = gw.row(b64.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["extra"]["images"]) == ("image", "ok", 2)
    assert row["extra"]["size"] == "1024x1024" and row["cost_usd"] == pytest.approx(2 * IMAGE_PRICE)
    assert row["prompt"] == prompt
    row = gw.row(through_litellm.headers["x-pitstop-request-id"])
    assert (row["model"], row["extra"]["images"], row["cost_usd"]) == ("img-litellm", 3, pytest.approx(3 * IMAGE_PRICE))


def test_image_edits_send_every_image_and_the_mask_intact(gw: Gateway, upstreams: tuple) -> None:
    """One image (sent on as `image`, as the SDK writes it), several (`image[]`), with a mask, over the direct
    transport and through litellm; each answer is the upstream's hash of the prompt and every byte it received;
    the row is an `image_edit` billed by the image."""
    a, _ = upstreams
    photo, sketch, mask = wav_bytes(3_000, seed=1), wav_bytes(2_000, seed=2), b"\x89PNG mask bytes"
    prompt = "add a pit crew"
    with gw.openai() as client:
        one = client.images.with_raw_response.edit(model="img", image=("photo.png", photo, "image/png"),
                                                    prompt=prompt, n=2, size="1024x1024")
        several = client.images.edit(model="img", image=[("photo.png", photo), ("sketch.png", sketch)],
                                     mask=("mask.png", mask), prompt=prompt, response_format="b64_json")
        sent = a.stats()["bodies"][-2:]
        through_litellm = client.images.with_raw_response.edit(model="img-litellm", prompt=prompt,
                                                                image=("photo.png", photo, "image/png"))
    assert [i.b64_json for i in one.parse().data or ()] == [edited_b64(prompt, [photo], None, i) for i in (0, 1)]
    assert [i.b64_json for i in several.data or ()] == [edited_b64(prompt, [photo, sketch], mask, 0)]
    assert sent[0]["image_fields"] == ["image"] and sent[1]["image_fields"] == ["image[]", "image[]"]
    assert [i["filename"] for i in sent[1]["images"]] == ["photo.png", "sketch.png"] and sent[1]["mask"] == len(mask)
    assert (sent[0]["model"], sent[0]["n"], sent[0]["size"]) == ("dall-e-3", "2", "1024x1024")
    assert [i.b64_json for i in through_litellm.parse().data or ()] == [edited_b64(prompt, [photo], None, 0)]
    row = gw.row(one.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["extra"]["images"], row["prompt"]) == ("image_edit", "ok", 2, prompt)
    assert row["extra"]["size"] == "1024x1024" and row["cost_usd"] == pytest.approx(2 * IMAGE_PRICE)
    row = gw.row(through_litellm.headers["x-pitstop-request-id"])
    assert (row["model"], row["endpoint"], row["cost_usd"]) == ("img-litellm", "image_edit", pytest.approx(IMAGE_PRICE))


def test_a_failing_deployment_is_retried_on_the_other(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    audio = wav_bytes(40_000, seed=9)
    with gw.openai() as client:
        answers = [client.audio.transcriptions.with_raw_response.create(
            model="whisper", file=("x.wav", audio), prompt="[fail:500@a]") for _ in range(4)]
    assert {r.parse().text for r in answers} == {transcript_text(audio, "b")}  # every one answered by b
    rows = [gw.row(r.headers["x-pitstop-request-id"]) for r in answers]
    assert {row["deployment"] for row in rows} == {"whisper#1"}
    assert a.stats()["requests"] >= 1  # a was tried first at least once, and failed
    assert b.stats()["bodies"][-1]["file"]["bytes"] == len(audio)  # the retry sent the whole file again


def test_a_speech_cut_upstream_cuts_the_clients_and_a_client_that_leaves_is_a_499(gw: Gateway,
                                                                                 upstreams: tuple) -> None:
    with gw.http() as http:
        with http.stream("POST", "/v1/audio/speech", json={"model": "tts", "input": "x" * 100 + " [break:2]",
                                                           "voice": "alloy"}) as cut, \
                pytest.raises(httpx.HTTPError):  # the audio does not end: the connection is dropped
            cut.read()
        cut_id = cut.headers["x-pitstop-request-id"]
        with http.stream("POST", "/v1/audio/speech", json={"model": "tts", "input": "[bytes:300000] [gap:0.2]",
                                                           "voice": "alloy"}) as left:
            next(left.iter_raw())  # the first chunk, then away
        left_id = left.headers["x-pitstop-request-id"]
    row = gw.row(cut_id)
    assert (row["status"], row["http_status"]) == ("error", 502) and "stream broke" in row["error"]
    # At most the two chunks sent before the cut (one may not be read: the reset drops what the kernel held).
    assert row["extra"]["audio_bytes"] <= 2 * 16 * 1024 and row["cost_usd"] > 0  # charged: the upstream spoke
    left_row = wait_until(lambda: (rows := gw.rows([left_id])) and rows[0], what="the left request's row")
    assert (left_row["status"], left_row["http_status"]) == ("aborted", 499)
    assert left_row["extra"]["audio_bytes"] < 300_000


def test_a_deployment_out_of_reach_is_retried_on_another(upstreams: tuple, tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/v1"  # nothing listens: connection refused
    models = [media_entry("tts", "audio_speech", dead, "tts-1"), media_entry("tts", "audio_speech",
                                                                             upstreams[0].api_base, "tts-1")]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        audio = [client.audio.speech.create(model="tts", input=f"say {i}", voice="alloy").read() for i in range(3)]
        rows = gateway.rows()
    assert audio == [speech_audio(f"say {i}") for i in range(3)]
    assert {row["deployment"] for row in rows} == {"tts#1"} and {row["status"] for row in rows} == {"ok"}


def test_a_wildcards_speech_model(upstreams: tuple, tmp_path: Path) -> None:
    """A name a `mode: audio_speech` wildcard matches speaks, and is kept out of chats once it is a model."""
    wildcard = media_entry("voice-*", "audio_speech", upstreams[0].api_base, "tts-*")
    with running_gateway(gateway_config(tmp_path, [wildcard, model_entry("chat", upstreams[0].api_base)])) as gateway, \
            gateway.openai() as client, gateway.http() as http:
        audio = client.audio.speech.create(model="voice-1", input="wild", voice="alloy").read()
        chat = http.post("/v1/chat/completions", json={"model": "voice-1", "messages": [{"role": "user",
                                                                                         "content": "x"}]})
    assert audio == speech_audio("wild") and upstreams[0].stats()["bodies"][-1]["model"] == "tts-1"
    assert chat.status_code == 400 and "/v1/audio/speech" in chat.json()["error"]["message"]


def test_models_of_another_endpoint_are_400s(gw: Gateway, upstreams: tuple) -> None:
    audio = wav_bytes(10_000)
    with gw.openai() as client, gw.http() as http:
        with pytest.raises(openai.BadRequestError) as chat_speaks:
            client.audio.speech.create(model="chat", input="hi", voice="alloy")
        with pytest.raises(openai.BadRequestError) as image_transcribes:
            client.audio.transcriptions.create(model="img", file=("x.wav", audio))
        with pytest.raises(openai.NotFoundError) as unknown:
            client.images.generate(model="nope", prompt="x")
        chat = http.post("/v1/chat/completions", json={"model": "img", "messages": [{"role": "user", "content": "x"}]})
    assert "not marked model_info.mode: audio_speech" in chat_speaks.value.message
    assert chat_speaks.value.body["param"] == "model"  # type: ignore[index]
    assert "/v1/audio/transcriptions" in image_transcribes.value.message
    assert "models marked mode: image_generation: img, img-litellm" in unknown.value.message
    assert chat.status_code == 400 and "/v1/images/generations" in chat.json()["error"]["message"]
    assert sum(u.stats()["requests"] for u in upstreams) == 0  # none reached an upstream


def test_metrics_count_them(gw: Gateway, upstreams: tuple) -> None:
    def requests_ok(http: httpx.Client) -> float:
        found = re.search(r'^pitstop_requests_total\{model="tts",route_group="",status="ok"\} (\S+)$',
                          http.get("/metrics").text, re.M)
        return float(found.group(1)) if found else 0.0

    with gw.http() as http, gw.openai() as client:
        before = requests_ok(http)
        client.audio.speech.create(model="tts", input="count me", voice="alloy").read()
        assert requests_ok(http) == before + 1


def test_the_config_refuses_media_models_on_engines_and_in_chats(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_settings

    base = "http://127.0.0.1:9/v1"
    engine = media_entry("tts", "audio_speech", base, "tts-1")
    engine["litellm_params"]["model"] = "pitstop-engine/tts"
    with pytest.raises(ConfigError, match="serve no audio, images"):
        parse_settings(gateway_config(tmp_path, [engine]))
    grouped = gateway_config(tmp_path, [media_entry("tts", "audio_speech", base, "tts-1"), model_entry("chat", base)],
                             [{"name": "grp", "models": ["chat", "tts"]}])
    with pytest.raises(ConfigError, match="'tts' is an audio_speech model"):
        parse_settings(grouped)
