"""A request's audio as the engine keeps it: one 30 s window's log-mel features, a hash of them, and, once the
Whisper runner has run the encoder on them, each decoder layer's cross-attention K/V (engine/model/whisper.py).
The K/V belong to the request, not to the prefix cache: a language-detection request and the transcription after
it share one AudioInput, so the encoder runs once for both, and the K/V go when the last of them lets it go.
The hash keys the decoder's own KV blocks (Sequence.hash_seed): the same tokens over other audio are other KV."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gateway imports the engine's sequences, and torch only with an in-process engine
    import torch


@dataclass(eq=False)
class AudioInput:
    features: torch.Tensor  # [num_mel_bins, frames]: the feature extractor's, for one window
    content_hash: int
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # each decoder layer's (K, V), once encoded


def audio_input(features: torch.Tensor) -> AudioInput:
    """The window's features with a hash of their bytes: 63 bits of BLAKE2b, alike in every process."""
    digest = hashlib.blake2b(features.contiguous().numpy().tobytes(), digest_size=8).digest()
    return AudioInput(features, int.from_bytes(digest, "big") >> 1)


def is_whisper(model_dir: str | Path) -> bool:
    """Whether a model folder is a Whisper (served by engine/whisper_runner.py), read without torch."""
    path = Path(model_dir) / "config.json"
    return path.exists() and json.loads(path.read_text()).get("model_type") == "whisper"
