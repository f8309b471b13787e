"""A Whisper model on `pitstop engine serve` behind the gateway: a `pitstop-engine/` entry marked
`mode: audio_transcription` answers /v1/audio/transcriptions and /translations through the gateway's audio relay
(gateway/media.py), called with the openai SDK; the transcript is the engine's own (checked against the engine
asked directly), and the outcome row is billed by the second as other audio models' are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engine.build import build_engine
from engine.server.app import create_app
from engine.tiny_whisper import make_tiny_whisper
from tests.engine.serving import sdk, serve_in_thread
from tests.engine.whisper_audio import chirp, wav_bytes
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway

SECOND_PRICE = 0.002


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = make_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))
    with serve_in_thread(create_app(build_engine(folder, num_blocks=64), "whisper")) as url:
        yield url


@pytest.fixture(scope="module")
def gw(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    whisper = {"model_name": "whisper", "litellm_params": {"model": "pitstop-engine/whisper", "api_base": f"{engine_url}/v1"},
               "model_info": {"mode": "audio_transcription", "input_cost_per_second": SECOND_PRICE}}
    tmp = tmp_path_factory.mktemp("gateway_whisper")
    with running_gateway(gateway_config(tmp, [whisper, model_entry("chat", f"{engine_url}/v1")])) as g:
        yield g


def test_transcriptions_and_translations_through_the_gateway(gw: Gateway, engine_url: str) -> None:
    audio = wav_bytes(chirp(3.5, 600.0))  # the gateway sends OpenAI's fields: a window runs to its context's end
    direct = sdk(engine_url).audio.transcriptions.create(model="whisper", file=("a.wav", audio), language="en")
    with gw.openai() as client:
        answer = client.audio.transcriptions.with_raw_response.create(
            model="whisper", file=("talk.wav", audio, "audio/wav"), language="en")
        translated = client.audio.translations.create(model="whisper", file=("talk.wav", audio),
                                                      response_format="verbose_json")
    assert answer.parse().text == direct.text and direct.text
    assert translated.task == "translate" and translated.duration == 3.5
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("transcription", "ok", "whisper")
    assert row["extra"]["seconds"] == pytest.approx(4)  # the engine's usage: whole seconds, rounded up
    assert row["cost_usd"] == pytest.approx(4 * SECOND_PRICE)


def test_the_engines_400s_pass_through_and_other_modes_are_still_refused(gw: Gateway, tmp_path: Path) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="whisper", file=("a.mp3", b"ID3\x04" + bytes(64)))
    assert "could not be decoded as mp3" in str(refused.value)
    from gateway.config import ConfigError, parse_settings

    speech = {"model_name": "tts", "litellm_params": {"model": "pitstop-engine/tts", "api_base": "http://127.0.0.1:9/v1"},
              "model_info": {"mode": "audio_speech"}}
    with pytest.raises(ConfigError, match="serve no audio, images"):
        parse_settings(gateway_config(tmp_path, [speech]))
