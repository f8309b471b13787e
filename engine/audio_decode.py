"""An uploaded audio file to Whisper's input: WAV decoded with the standard library's struct and numpy (PCM of 8,
16, 24 or 32 bits, IEEE float of 32 or 64, WAVE_FORMAT_EXTENSIBLE of either), mp3, ogg, flac, webm, mp4/m4a and
aac with PyAV (engine/audio_container.py), channels mixed to mono, resampled to 16 kHz (scipy.signal.resample_poly),
then cut into 30 s windows whose log-mel features transformers' WhisperFeatureExtractor makes from the model
folder's preprocessor_config.json. Longer audio is transcribed one window after another, as vLLM does (each window
its own request, the texts joined). An empty file, a garbled one and any other format are AudioErrors, which the
server answers with a 400."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from math import gcd
from pathlib import Path

import numpy as np

from engine.audio_container import ContainerError, decode_container, sniff

ACCEPTED = "WAV, mp3, ogg, flac, webm, mp4/m4a and aac"
SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class AudioError(ValueError):
    """The upload is not audio this server decodes; the message says why."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE
    source_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode_audio(data: bytes) -> DecodedAudio:
    """An audio file's samples, mono at 16 kHz in [-1, 1]."""
    if not data:
        raise AudioError("the audio file is empty")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        found = sniff(data)
        if found is None:
            raise AudioError(f"the file could not be decoded as audio: {ACCEPTED} files are decoded")
        try:
            frames, rate, channels = decode_container(data, *found)
        except ContainerError as exc:
            raise AudioError(str(exc)) from None
        return _mono_16k(frames.reshape(-1), rate, channels)
    fmt, payload = _chunks(data)
    if len(fmt) < 16:
        raise AudioError("the WAV file has no valid 'fmt ' chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID's first two bytes
    if channels < 1 or rate < 1:
        raise AudioError(f"the WAV header is invalid ({channels} channels at {rate} Hz)")
    return _mono_16k(_samples(payload, tag, bits), rate, channels)


def _mono_16k(samples: np.ndarray, rate: int, channels: int) -> DecodedAudio:
    """Interleaved samples of `channels` at `rate`, as the mean of the channels at 16 kHz."""
    usable = len(samples) - len(samples) % channels
    if usable == 0:
        raise AudioError("the audio holds no samples")
    mono = samples[:usable].reshape(-1, channels).mean(axis=1, dtype=np.float64)
    return DecodedAudio(resample(mono, rate).astype(np.float32), rate, channels)


def _chunks(data: bytes) -> tuple[bytes, bytes]:
    """The 'fmt ' and 'data' chunks of a RIFF/WAVE file (a data chunk cut short is read as far as it goes)."""
    fmt = payload = None
    offset = 12
    while offset + 8 <= len(data):
        name, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        body = data[offset + 8:offset + 8 + size]
        if name == b"fmt ":
            fmt = body
        elif name == b"data":
            payload = body
        offset += 8 + size + size % 2
    if fmt is None or payload is None:
        raise AudioError("the WAV file lacks its " + ("'fmt '" if fmt is None else "'data'") + " chunk")
    return fmt, payload


def _samples(payload: bytes, tag: int, bits: int) -> np.ndarray:
    if tag == _FLOAT and bits in (32, 64):
        dtype = np.dtype("<f4" if bits == 32 else "<f8")
        return np.frombuffer(payload[: len(payload) // dtype.itemsize * dtype.itemsize], dtype).astype(np.float64)
    if tag != _PCM or bits not in (8, 16, 24, 32):
        raise AudioError(f"unsupported WAV encoding (format {tag}, {bits} bits): PCM of 8, 16, 24 or 32 bits and "
                         "float of 32 or 64 are decoded")
    if bits == 8:  # unsigned, centred on 128
        return (np.frombuffer(payload, np.uint8).astype(np.float64) - 128.0) / 128.0
    if bits == 24:
        raw = np.frombuffer(payload[: len(payload) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        return np.where(values >= 1 << 23, values - (1 << 24), values) / float(1 << 23)
    dtype = np.dtype("<i2" if bits == 16 else "<i4")
    whole = payload[: len(payload) // dtype.itemsize * dtype.itemsize]
    return np.frombuffer(whole, dtype).astype(np.float64) / float(1 << (bits - 1))


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """To 16 kHz by a polyphase filter (scipy's resample_poly), the ratio reduced by the rates' gcd."""
    if rate == SAMPLE_RATE:
        return samples
    from scipy.signal import resample_poly

    common = gcd(rate, SAMPLE_RATE)
    return resample_poly(samples, SAMPLE_RATE // common, rate // common)


def windows(samples: np.ndarray) -> list[np.ndarray]:
    """Consecutive 30 s windows (the last one shorter; the extractor pads it with silence)."""
    size = SAMPLE_RATE * WINDOW_SECONDS
    return [samples[start:start + size] for start in range(0, len(samples), size)]


@cache
def feature_extractor(model_dir: str) -> object:
    """The folder's WhisperFeatureExtractor (its preprocessor_config.json; nothing downloaded)."""
    from transformers import WhisperFeatureExtractor

    path = Path(model_dir)
    if not (path / "preprocessor_config.json").exists():
        return WhisperFeatureExtractor()  # Whisper's own defaults: 80 mel bins, 30 s at 16 kHz
    return WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)


def log_mel(model_dir: str, window: np.ndarray) -> np.ndarray:
    """One window's log-mel features [num_mel_bins, 3000], as transformers' pipeline makes them."""
    extractor = feature_extractor(model_dir)
    out = extractor(window, sampling_rate=SAMPLE_RATE, return_tensors="np")  # type: ignore[operator]
    return out["input_features"][0]
