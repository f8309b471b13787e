"""Whisper on the engine server (engine/server/audio.py over engine/whisper_runner.py), over a real socket with
the openai SDK and httpx: greedy transcripts token for token equal to transformers' `generate` on the same tiny
random checkpoint (transcribe and translate, a given or detected language, with and without a prompt), a batch of
uploads and a long upload's windows sharing steps, every response_format, streaming, and 400s for bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

from engine.async_engine import AsyncEngine
from engine.audio_decode import log_mel
from engine.build import build_engine
from engine.server.app import create_app
from engine.tiny_whisper import PREV, make_tiny_whisper
from engine.tokenizer import Tokenizer
from tests.engine.serving import sdk, serve_in_thread
from tests.engine.whisper_audio import MAX_NEW_TOKENS, chirp, hf_whisper, transformers_tokens, wav_bytes

PROMPT = "hello world"


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="module")
def engine(whisper_dir: Path) -> AsyncEngine:
    return build_engine(whisper_dir, num_blocks=128)


@pytest.fixture(scope="module")
def url(engine: AsyncEngine) -> Iterator[str]:
    with serve_in_thread(create_app(engine, "whisper")) as base:
        yield base


def _post(url: str, audio: bytes | None, path: str = "transcriptions", **fields: object) -> httpx.Response:
    data = {"model": "whisper", "max_completion_tokens": str(MAX_NEW_TOKENS)} | {k: str(v) for k, v in fields.items()}
    files = {"file": ("audio.wav", audio, "audio/wav")} if audio is not None else None
    return httpx.post(f"{url}/v1/audio/{path}", data=data, files=files, timeout=60)


def _prompt_ids(whisper_dir: Path) -> list[int]:
    tokenizer = Tokenizer(whisper_dir)  # as WhisperTokenizer.get_prompt_ids: <|startofprev|> and " " + the text
    return [tokenizer.token_to_id(PREV), *tokenizer.encode(" " + PROMPT)]


@pytest.mark.parametrize("task", ["transcribe", "translate"])
@pytest.mark.parametrize("language", [None, "de"])
@pytest.mark.parametrize("prompted", [False, True])
def test_greedy_tokens_equal_transformers_generate(url: str, whisper_dir: Path, task: str, language: str | None,
                                                   prompted: bool) -> None:
    samples = chirp(4.0, 440.0 if task == "transcribe" else 2500.0)
    fields: dict = {"response_format": "verbose_json"} | ({"language": language} if language else {})
    if prompted:
        fields["prompt"] = PROMPT
    answer = _post(url, wav_bytes(samples), "transcriptions" if task == "transcribe" else "translations", **fields)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = transformers_tokens(whisper_dir, samples, task, language, _prompt_ids(whisper_dir) if prompted else None)
    assert [s["tokens"] for s in body["segments"]] == [expected]
    assert body["text"] == Tokenizer(whisper_dir).decode(expected).strip()
    assert body["task"] == task and body["duration"] == 4.0
    if language is None:  # detected as generate detects it: its first forced tokens say which
        assert body["language"] in ("english", "chinese", "german", "spanish", "french")
    else:
        assert body["language"] == "german"


def test_the_encoder_runs_once_a_window_and_decoder_blocks_are_not_shared_across_audio(
        url: str, engine: AsyncEngine, whisper_dir: Path) -> None:
    """A detected language and the transcription after it share the window's encoder output; the same decoder
    prompt (a 30-token prompt fills whole blocks) over other audio must not take the first one's cached blocks."""
    runner = engine.engine.runner
    prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    tokenizer = Tokenizer(whisper_dir)
    prompt_ids = [tokenizer.token_to_id(PREV), *tokenizer.encode(" " + prompt)]
    assert len(prompt_ids) + 4 > 32  # two whole blocks of 16 before the first sampled token
    for pitch in (500.0, 2000.0):
        before = runner.encoder_windows  # type: ignore[attr-defined]
        samples = chirp(2.0, pitch)
        body = _post(url, wav_bytes(samples), response_format="verbose_json", prompt=prompt).json()
        assert runner.encoder_windows == before + 1  # type: ignore[attr-defined]
        assert body["segments"][0]["tokens"] == transformers_tokens(whisper_dir, samples, prompt_ids=prompt_ids)


def test_uploads_at_once_are_batched_and_each_equals_its_own_transcript(url: str, whisper_dir: Path) -> None:
    pitches = [300.0, 700.0, 1500.0, 3000.0]
    steps_before = httpx.get(f"{url}/v1/engine/stats").json()["num_steps"]
    with ThreadPoolExecutor(len(pitches)) as pool:
        answers = list(pool.map(lambda p: _post(url, wav_bytes(chirp(3.0, p)), language="en",
                                                response_format="verbose_json"), pitches))
    steps = httpx.get(f"{url}/v1/engine/stats").json()["num_steps"] - steps_before
    tokens = [a.json()["segments"][0]["tokens"] for a in answers]
    assert tokens == [transformers_tokens(whisper_dir, chirp(3.0, p), language="en") for p in pitches]
    assert len({tuple(t) for t in tokens}) > 1  # the audio decides the transcript
    assert steps < sum(len(t) for t in tokens)  # some steps decoded several uploads together


def test_long_audio_is_transcribed_in_30_second_windows(url: str, whisper_dir: Path) -> None:
    samples = np.concatenate([chirp(30.0, 300.0), chirp(30.0, 1200.0), chirp(5.0, 2500.0)])
    steps_before = httpx.get(f"{url}/v1/engine/stats").json()["num_steps"]
    body = _post(url, wav_bytes(samples), language="en", response_format="verbose_json").json()
    steps = httpx.get(f"{url}/v1/engine/stats").json()["num_steps"] - steps_before
    assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    cuts = [samples[:480_000], samples[480_000:960_000], samples[960_000:]]
    windows = [s["tokens"] for s in body["segments"]]
    assert windows == [transformers_tokens(whisper_dir, cut, language="en") for cut in cuts]
    assert body["text"] == "".join(s["text"] for s in body["segments"]).strip()
    assert body["duration"] == 65.0 and body["usage"] == {"type": "duration", "seconds": 65}
    assert steps < sum(len(w) for w in windows)  # the windows ran side by side


def test_compressed_uploads_transcribe_as_the_audio_they_hold(url: str, whisper_dir: Path) -> None:
    """A FLAC of a WAV's 16-bit samples: that WAV's transcript; an mp3 and an m4a through the SDK: transcripts
    of the tone they hold (lossy, so only checked to be the engine's answer for what was decoded)."""
    from engine.audio_decode import decode_audio
    from tests.engine.whisper_audio import encoded

    tone = chirp(3.0, 700.0)
    flac = _post(url, encoded(tone, "flac", "flac"), language="en", response_format="verbose_json")
    assert flac.status_code == 200, flac.text
    assert flac.json()["segments"][0]["tokens"] == transformers_tokens(whisper_dir, decode_audio(wav_bytes(tone)).samples,
                                                                        language="en")
    client = sdk(url)
    for name, data in (("a.mp3", encoded(tone, "mp3", "libmp3lame")), ("a.m4a", encoded(tone, "mp4", "aac"))):
        answer = client.audio.transcriptions.create(model="whisper", file=(name, data), language="en",
                                                    response_format="verbose_json", extra_body={"max_completion_tokens": MAX_NEW_TOKENS})
        heard = decode_audio(data).samples
        assert answer.segments[0].end == pytest.approx(len(heard) / 16_000, abs=0.01), name  # type: ignore[index]
        assert [t for t in answer.segments[0].tokens] == transformers_tokens(whisper_dir, heard, language="en"), name  # type: ignore[index]


def test_each_response_format(url: str) -> None:
    audio = wav_bytes(chirp(2.5, 440.0))
    text = _post(url, audio, language="en").json()
    assert set(text) == {"text", "usage"} and text["text"] and text["usage"] == {"type": "duration", "seconds": 3}
    plain = _post(url, audio, language="en", response_format="text")
    assert plain.headers["content-type"].startswith("text/plain") and plain.text == text["text"] + "\n"
    srt = _post(url, audio, language="en", response_format="srt").text
    assert srt == f"1\n00:00:00,000 --> 00:00:02,500\n{text['text']}\n\n"
    vtt = _post(url, audio, language="en", response_format="vtt").text
    assert vtt == f"WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n{text['text']}\n\n"
    verbose = _post(url, audio, language="en", response_format="verbose_json").json()
    assert verbose["language"] == "english" and verbose["text"] == text["text"]
    assert verbose["segments"][0]["start"] == 0.0 and verbose["segments"][0]["end"] == 2.5


def test_sdk_transcription_translation_and_stream(url: str, whisper_dir: Path) -> None:
    client = sdk(url)
    samples = chirp(3.0, 900.0)
    options = {"max_completion_tokens": MAX_NEW_TOKENS}
    plain = client.audio.transcriptions.create(model="whisper", file=("a.wav", wav_bytes(samples)), language="en",
                                               extra_body=options)
    expected = Tokenizer(whisper_dir).decode(transformers_tokens(whisper_dir, samples, language="en")).strip()
    assert plain.text == expected
    translated = client.audio.translations.create(model="whisper", file=("a.wav", wav_bytes(samples)),
                                                  response_format="verbose_json", extra_body=options)
    assert translated.segments[0].tokens == transformers_tokens(whisper_dir, samples, "translate")
    events = list(client.audio.transcriptions.create(model="whisper", file=("a.wav", wav_bytes(samples)),
                                                     language="en", stream=True, extra_body=options))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) > 1 and events[-1].type == "transcript.text.done"
    assert "".join(deltas).strip() == events[-1].text == expected
    usage = events[-1].usage
    assert usage.output_tokens == len(transformers_tokens(whisper_dir, samples, language="en"))
    assert usage.input_tokens == 4 + 1500  # the forced prefix, and a window's encoder positions


@pytest.mark.parametrize(("audio", "fields", "param", "words"), [
    (None, {}, "file", "'file' is required"),
    (b"", {}, "file", "empty"),
    (b"\x00\x01garbage bytes, not audio at all", {}, "file", "could not be decoded"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", {}, "file", "could not be decoded as mp3"),
    (b"OggS\x00\x02" + bytes(30), {}, "file", "could not be decoded as ogg"),
    (b"RIFF\x10\x00\x00\x00WAVEjunk\x00\x00\x00\x00", {}, "file", "lacks its 'fmt '"),
    ("wav", {"response_format": "mp3"}, "response_format", "unsupported response_format"),
    ("wav", {"language": "klingon"}, "language", "unsupported language"),
    ("wav", {"temperature": "3"}, "temperature", "between 0 and 1"),
    ("wav", {"temperature": "warm"}, "temperature", "must be a number"),
    ("wav", {"max_completion_tokens": "0"}, "max_completion_tokens", "positive integer"),
])  # fmt: skip
def test_bad_input_is_a_400_in_openais_shape(url: str, audio: bytes | str | None, fields: dict, param: str,
                                             words: str) -> None:
    sent = wav_bytes(chirp(1.0, 440.0)) if audio == "wav" else audio
    answer = _post(url, sent, **fields)  # type: ignore[arg-type]
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"]


def test_unknown_model_is_a_404_and_text_requests_to_whisper_a_400(url: str) -> None:
    answer = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": "nope"},
                        files={"file": ("a.wav", wav_bytes(chirp(1.0, 440.0)))})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(url).completions.create(model="whisper", prompt="hello", max_tokens=3)
    assert "transcribes audio" in json.dumps(refused.value.body)


def test_a_text_model_refuses_audio(tiny_model_dir: Path) -> None:
    with serve_in_thread(create_app(build_engine(tiny_model_dir, num_blocks=32), "tiny")) as base:
        answer = httpx.post(f"{base}/v1/audio/transcriptions", data={"model": "tiny"},
                            files={"file": ("a.wav", wav_bytes(chirp(1.0, 440.0)))})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "model_not_supported"


def test_begin_suppress_tokens_hold_back_the_first_token_as_generate_does(whisper_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A copy of the folder whose begin_suppress_tokens hold the token the model would begin with: both the
    engine and transformers begin with another one, and then go on alike."""
    samples = chirp(2.0, 800.0)
    first = transformers_tokens(whisper_dir, samples, language="en")[0]
    folder = tmp_path / "whisper"
    shutil.copytree(whisper_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["begin_suppress_tokens"] = [first, *config["begin_suppress_tokens"]]
    (folder / "generation_config.json").write_text(json.dumps(config))
    expected = transformers_tokens(folder, samples, language="en")
    assert expected[0] != first
    with serve_in_thread(create_app(build_engine(folder, num_blocks=32), "whisper")) as base:
        body = _post(base, wav_bytes(samples), language="en", response_format="verbose_json").json()
    assert body["segments"][0]["tokens"] == expected


def test_an_english_only_model_is_prompted_as_generate_prompts_it(tmp_path: Path) -> None:
    """The `.en` releases' way: <|startoftranscript|><|notimestamps|>, English only, no translations."""
    folder = make_tiny_whisper(tmp_path / "whisper_en", multilingual=False, seed=1)
    samples = chirp(2.0, 700.0)
    with torch.no_grad():
        expected = hf_whisper(folder).generate(torch.from_numpy(log_mel(str(folder), samples))[None],
                                               max_new_tokens=MAX_NEW_TOKENS)[0].tolist()
    with serve_in_thread(create_app(build_engine(folder, num_blocks=32), "whisper")) as base:
        body = _post(base, wav_bytes(samples), response_format="verbose_json").json()
        translation = _post(base, wav_bytes(samples), "translations")
        german = _post(base, wav_bytes(samples), language="de")
    assert body["segments"][0]["tokens"] == expected and body["language"] == "english"
    assert translation.status_code == 400 and "English-only" in translation.json()["error"]["message"]
    assert german.status_code == 400 and german.json()["error"]["param"] == "language"
