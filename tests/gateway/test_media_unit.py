"""The audio and image endpoints' parts without a server: a WAV's duration from its header (and none from
other files or a cut header), unit prices from model_info over litellm's offline price map, and the units
a request is held and billed for."""

from __future__ import annotations

import pytest

from gateway.audio_upload import UploadedFile, wav_seconds
from gateway.deployments import Deployment
from gateway.media_prices import answered_units, estimated_units, unit_price
from gateway.media_request import MediaRequest, parse_image, parse_speech
from gateway.model_list_config import ModelInfo
from tests.gateway.media_helpers import wav_bytes, wav_duration


def test_a_wavs_duration_comes_from_its_header() -> None:
    audio = wav_bytes(64_044)
    assert wav_seconds(audio) == pytest.approx(wav_duration(audio)) == pytest.approx(2.0)
    assert wav_seconds(b"ID3" + audio[3:]) is None  # not RIFF
    assert wav_seconds(audio[:30]) is None  # the fmt chunk cut: no byte rate
    assert wav_seconds(audio[:1044]) == pytest.approx(1000 / 32_000)  # a data chunk cut short: what is there


def _deployment(model: str, **prices: float) -> Deployment:
    return Deployment(f"{model}#0", model, backend=None, info=ModelInfo(**prices), provider_model=model)  # type: ignore[arg-type]


def test_unit_prices_are_model_infos_else_litellms_map() -> None:
    speech = parse_speech({"model": "tts", "input": "hello", "voice": "alloy"})
    assert unit_price(_deployment("openai/tts-1"), speech) == pytest.approx(0.000015)  # litellm's map, offline
    assert unit_price(_deployment("openai/tts-1", input_cost_per_character=1e-4), speech) == 1e-4
    assert unit_price(_deployment("openai/unknown-voice"), speech) == 0.0
    image = parse_image({"model": "img", "prompt": "x", "n": 2, "size": "512x512"})
    assert unit_price(_deployment("openai/dall-e-2", output_cost_per_image=0.02), image) == 0.02
    assert unit_price(_deployment("openai/dall-e-2", input_cost_per_pixel=1e-7), image) == pytest.approx(512 * 512 * 1e-7)


def test_units_held_and_billed() -> None:
    speech = parse_speech({"model": "tts", "input": "twelve chars", "voice": "alloy"})
    assert estimated_units(speech) == answered_units(speech, {})[0] == 12
    image = parse_image({"model": "img", "prompt": "x", "n": 3})
    assert estimated_units(image) == 3 and answered_units(image, {"data": [{}, {}]}) == (2, False)
    mp3 = MediaRequest("transcription", "whisper", {"file": UploadedFile("a.mp3", b"x" * 32_000, "audio/mpeg")}, "", None)
    assert estimated_units(mp3) == 2.0  # 128 kbit/s
    assert answered_units(mp3, {"duration": 7.5}) == (7.5, False)
    assert answered_units(mp3, {"duration": None}) == (2.0, True)
