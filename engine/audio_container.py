"""Compressed audio uploads (mp3, ogg (Vorbis, Opus), flac, webm, mp4/m4a (AAC), raw AAC): the formats OpenAI's
transcription endpoints take besides WAV, decoded with PyAV (FFmpeg's decoders, in its wheel) to float samples at
the file's own rate, so engine/audio_decode.py mixes and resamples them as it does a WAV file's (one resampler
for every format: a FLAC of a WAV's samples transcribes as that WAV does).

The container format is named from the file's magic bytes and given to FFmpeg, never probed: probing would let an
upload pick any of FFmpeg's demuxers, some of which open other files or URLs a playlist names (HLS, concat).
A file none of the magic bytes names is refused, as is one with no audio stream or no decodable frame."""

from __future__ import annotations

import io

import numpy as np

# (magic bytes at offset 0, or `None` for mp4's "ftyp" at offset 4) -> (FFmpeg demuxer, the format's name)
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"ID3", "mp3", "mp3"), (b"OggS", "ogg", "ogg"), (b"fLaC", "flac", "flac"),
    (b"\x1aE\xdf\xa3", "matroska", "webm"))


class ContainerError(ValueError):
    """The upload could not be decoded; the message says why (engine/audio_decode.py makes it an AudioError)."""


def sniff(data: bytes) -> tuple[str, str] | None:
    """(FFmpeg demuxer, format name) for a compressed audio file's first bytes; None for anything else."""
    for magic, demuxer, name in _MAGIC:
        if data.startswith(magic):
            return demuxer, name
    if data[4:8] == b"ftyp":
        return "mp4", "mp4/m4a"
    if len(data) >= 2 and data[0] == 0xFF:
        if data[1] & 0xF6 == 0xF0:  # ADTS: a 12-bit sync, layer 00
            return "aac", "aac"
        if data[1] & 0xE0 == 0xE0 and data[1] & 0x06:  # an MPEG audio frame's sync, layer I-III: mp3 without ID3
            return "mp3", "mp3"
    return None


def decode_container(data: bytes, demuxer: str, name: str) -> tuple[np.ndarray, int, int]:
    """(samples [frames, channels] as float64 in [-1, 1], sample rate, channels) of the first audio stream."""
    import av

    chunks: list[np.ndarray] = []
    rate = channels = 0
    try:
        with av.open(io.BytesIO(data), format=demuxer) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise ContainerError(f"the {name} file holds no audio stream")
            resampler = av.AudioResampler(format="dbl")  # packed float64; the layout and rate kept
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    rate, channels = out.sample_rate, out.layout.nb_channels
                    chunks.append(out.to_ndarray().reshape(-1, channels))
            for out in resampler.resample(None):  # what the resampler still holds
                chunks.append(out.to_ndarray().reshape(-1, channels))
    except av.FFmpegError as exc:
        said = (exc.strerror or str(exc)).rstrip(".").lower()  # FFmpeg's words, without its errno and file name
        raise ContainerError(f"the file could not be decoded as {name} ({said})") from None
    if not chunks or rate == 0:
        raise ContainerError(f"the {name} file holds no audio samples")
    return np.concatenate(chunks), rate, channels
