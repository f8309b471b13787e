"""A model folder's end-of-sequence token ids."""

from __future__ import annotations

import json
from pathlib import Path

from engine.model.config import ModelConfig


def read_eos_token_ids(model_dir: Path, config: ModelConfig) -> tuple[int, ...]:
    """EOS ids from generation_config.json (which may list several), else config.json."""
    path = model_dir / "generation_config.json"
    if path.exists():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if eos is not None:
            return (eos,) if isinstance(eos, int) else tuple(eos)
    return config.eos_token_ids
