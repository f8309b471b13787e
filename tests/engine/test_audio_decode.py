"""Decoding uploads for Whisper (engine/audio_decode.py): every WAV encoding written by the standard library or by
hand read back to the samples written, channels mixed to mono, other rates resampled to 16 kHz as scipy's
resample_poly does, 30 s windows; mp3, ogg and webm (Opus), mp4 and raw AAC encoded by FFmpeg decoded to the tone
they hold, FLAC to a WAV's very samples; and the refusals (empty, garbled, unknown formats, a WAV without its
chunks)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio_decode import AudioError, decode_audio, resample, windows
from tests.engine.whisper_audio import chirp, encoded, wav_bytes

TONE = chirp(0.5, 440.0)


@pytest.mark.parametrize(("options", "tolerance"), [
    ({"bits": 8}, 1 / 128), ({"bits": 16}, 1 / 32768), ({"bits": 24}, 1 / 2**23), ({"bits": 32}, 1 / 2**31),
    ({"bits": 32, "floating": True}, 0.0), ({"bits": 64, "floating": True}, 0.0),
    ({"bits": 32, "floating": True, "extensible": True}, 0.0)])  # fmt: skip
def test_every_wav_encoding_reads_back(options: dict, tolerance: float) -> None:
    decoded = decode_audio(wav_bytes(TONE, **options))
    assert decoded.samples.dtype == np.float32 and len(decoded.samples) == len(TONE)
    assert np.abs(decoded.samples - TONE).max() <= tolerance + 1e-7


def test_channels_are_mixed_and_rates_resampled() -> None:
    stereo = decode_audio(wav_bytes(TONE, channels=2))
    assert stereo.channels == 2 and np.abs(stereo.samples - TONE).max() < 1e-4
    left_only = np.stack([TONE, np.zeros_like(TONE)], axis=1).reshape(-1)
    mixed = decode_audio(_interleaved(left_only, 2))
    assert np.abs(mixed.samples - TONE / 2).max() < 1e-4  # the mean of the channels
    high = chirp(0.5, 440.0, rate=44_100)
    decoded = decode_audio(wav_bytes(high, rate=44_100))
    assert decoded.source_rate == 44_100 and len(decoded.samples) == 8000
    assert np.allclose(decoded.samples, resample(high.astype(np.float64), 44_100), atol=1e-4)
    assert np.abs(decoded.samples[200:-200] - TONE[200:-200]).max() < 0.01  # the same tone at 16 kHz


def _interleaved(frames: np.ndarray, channels: int) -> bytes:
    """A 16-bit WAV whose frames are already interleaved over `channels`."""
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(np.round(frames * 32767).astype("<i2").tobytes())
    return out.getvalue()


def test_windows_are_consecutive_30_second_cuts() -> None:
    samples = np.arange(16_000 * 65, dtype=np.float32)
    cut = windows(samples)
    assert [len(w) for w in cut] == [480_000, 480_000, 80_000]
    assert np.array_equal(np.concatenate(cut), samples)


@pytest.mark.parametrize(("container", "codec", "rate", "delay"), [
    ("mp3", "libmp3lame", 16_000, 0), ("ogg", "libopus", 48_000, 0), ("webm", "libopus", 48_000, 0),
    ("mp4", "aac", 16_000, 1024), ("adts", "aac", 16_000, 1024)])  # fmt: skip
def test_compressed_formats_decode_to_the_tone_they_encode(container: str, codec: str, rate: int, delay: int) -> None:
    """Lossy codecs: the same tone (correlation > 0.99) after the codec's own delay (AAC's 1,024 priming samples,
    which nothing in these files trims); Opus at 48 kHz resampled as a WAV at 48 kHz is."""
    tone = chirp(0.5, 440.0, rate=rate)
    decoded = decode_audio(encoded(tone, container, codec, rate))
    assert decoded.source_rate == rate and decoded.channels == 1
    heard = decoded.samples[delay: delay + len(TONE)]
    assert len(heard) == len(TONE) and np.corrcoef(heard, TONE)[0, 1] > 0.99


def test_flac_reads_back_the_samples_a_wav_holds_and_stereo_is_mixed() -> None:
    flac = decode_audio(encoded(TONE, "flac", "flac"))
    assert np.array_equal(flac.samples, decode_audio(wav_bytes(TONE)).samples)  # lossless: the same 16-bit samples
    stereo = decode_audio(encoded(chirp(0.5, 440.0, rate=48_000), "flac", "flac", 48_000, channels=2))
    assert stereo.channels == 2 and stereo.source_rate == 48_000 and len(stereo.samples) == len(TONE)
    assert np.abs(stereo.samples[200:-200] - TONE[200:-200]).max() < 0.01


@pytest.mark.parametrize(("data", "words"), [
    (b"", "empty"),
    (b"hello, this is text", "could not be decoded as audio: WAV, mp3"),
    (b"ID3\x03\x00" + bytes(20), "could not be decoded as mp3 (invalid data"),
    (b"fLaC" + bytes(20), "could not be decoded as flac"),
    (b"\x00\x00\x00\x20ftypM4A " + bytes(20), "could not be decoded as mp4/m4a"),
    (b"OggS\x00\x02" + bytes(30), "could not be decoded as ogg"),
    (b"\xff\xf1" + bytes(100), "the aac file holds no audio samples"),
    (b"RIFF\x04\x00\x00\x00WAVE", "lacks its 'fmt '"),
    (wav_bytes(TONE)[:44], "holds no samples"),
    (wav_bytes(TONE).replace(b"\x01\x00\x01\x00", b"\x02\x00\x01\x00", 1), "unsupported WAV encoding (format 2"),
])  # fmt: skip
def test_what_does_not_decode_is_an_audio_error(data: bytes, words: str) -> None:
    with pytest.raises(AudioError, match=".*" + words.replace("(", r"\(").replace(")", r"\)")):
        decode_audio(data)
