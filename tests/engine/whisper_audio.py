"""Audio for the Whisper tests: chirps (their transcripts differ by pitch on the tiny random Whisper of
engine/tiny_whisper.py), WAV files of every encoding the server decodes, and transformers' own transcripts to
compare with: WhisperForConditionalGeneration.generate on the features WhisperFeatureExtractor makes."""

from __future__ import annotations

import io
import struct
import wave
from functools import cache
from pathlib import Path

import numpy as np
import torch

from engine.audio_decode import SAMPLE_RATE, log_mel

MAX_NEW_TOKENS = 12


def chirp(seconds: float, pitch: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A rising tone from `pitch` Hz, at 0.3 of full scale."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * pitch * t * (1 + t / 5))).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, bits: int = 16, channels: int = 1,
              floating: bool = False, extensible: bool = False) -> bytes:
    """`samples` ([-1, 1], mono: repeated over `channels`) as a WAV file: PCM of `bits` through the standard
    library's wave, or IEEE float (format 3, or WAVE_FORMAT_EXTENSIBLE) written by hand."""
    frames = np.repeat(samples[:, None], channels, axis=1).reshape(-1)
    if floating:
        data = frames.astype("<f4" if bits == 32 else "<f8").tobytes()
        tag = 0xFFFE if extensible else 3
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
        if extensible:  # cbSize, valid bits, channel mask, the sub-format GUID (float's tag first)
            fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", 3) + bytes(14)
        body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
        return b"RIFF" + struct.pack("<I", len(body)) + body
    scale = float(1 << (bits - 1))
    ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype(np.int64)
    if bits == 8:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        raw = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    else:
        raw = ints.astype("<i2" if bits == 16 else "<i4").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(raw)
    return out.getvalue()


def encoded(samples: np.ndarray, container: str, codec: str, rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """`samples` ([-1, 1] at `rate`; mono, repeated over `channels`) encoded by PyAV (FFmpeg) as `codec` in
    `container` ("mp3", "ogg", "flac", "webm", "mp4", "adts"): what a client's recorder or ffmpeg would upload."""
    import av

    layout = "mono" if channels == 1 else "stereo"
    frames = np.repeat(samples[:, None], channels, axis=1).reshape(1, -1)
    lossless = codec == "flac"  # its 16-bit samples, as a 16-bit WAV file holds them
    data = np.clip(np.round(frames * 32768), -32768, 32767).astype(np.int16) if lossless else frames.astype(np.float32)
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(data, format="s16" if lossless else "flt", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            muxer.mux(packet)
    return out.getvalue()


@cache
def hf_whisper(model_dir: Path) -> torch.nn.Module:
    import transformers as hf

    return hf.WhisperForConditionalGeneration.from_pretrained(str(model_dir)).eval()


def transformers_tokens(model_dir: Path, samples: np.ndarray, task: str = "transcribe", language: str | None = None,
                        prompt_ids: list[int] | None = None, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """transformers' greedy tokens for one window (after its forced prefix and any prompt)."""
    features = torch.from_numpy(log_mel(str(model_dir), samples))[None]
    options: dict = {"task": task, "max_new_tokens": max_new_tokens}
    if language is not None:
        options["language"] = language
    if prompt_ids:
        options["prompt_ids"] = torch.tensor(prompt_ids)
    with torch.no_grad():
        return hf_whisper(model_dir).generate(features, **options)[0].tolist()
