"""vLLM's `--hf-overrides`: a JSON object whose keys replace the model's config.json's (Qwen3-Reranker's
`{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
"is_original_qwen3_reranker": true}`). Applied as a folder beside the model's: its config.json overridden, every
other file a link to the original's, so everything that reads a model folder (the runner, the loader, the
tokenizer, tensor-parallel workers) reads the overridden config without a parameter of its own. The folder
is named by the original's path and the overrides, so the same pair shares one."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

OVERRIDES_ROOT = Path(tempfile.gettempdir()) / "pitstop-hf-overrides"


def parse_hf_overrides(text: str) -> dict[str, Any]:
    """The CLI's spelling: a JSON object (a ValueError naming what is wrong otherwise)."""
    try:
        overrides = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--hf-overrides must be a JSON object: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValueError("--hf-overrides must be a JSON object of config.json keys")
    return overrides


def hf_overrides_argument(text: str) -> dict[str, Any]:
    """`pitstop engine serve --hf-overrides JSON`'s type."""
    try:
        return parse_hf_overrides(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def with_hf_overrides(model_dir: str | Path, overrides: dict[str, Any] | None, root: Path = OVERRIDES_ROOT) -> Path:
    """`model_dir` itself without overrides; else the overridden folder (made once)."""
    model_dir = Path(model_dir).resolve()
    if not overrides:
        return model_dir
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{model_dir} is not a model folder (no config.json) to override")
    config = {**json.loads(config_path.read_text()), **overrides}
    key = hashlib.sha256(f"{model_dir}\n{json.dumps(overrides, sort_keys=True)}".encode()).hexdigest()[:16]
    folder = root / f"{model_dir.name}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    for entry in model_dir.iterdir():
        link = folder / entry.name
        if entry.name != "config.json" and not link.exists():
            with contextlib.suppress(FileExistsError):  # another process linked it just now
                link.symlink_to(entry)
    # Written whole, then renamed: a reader never sees half a config.
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".json", delete=False) as tmp:
        json.dump(config, tmp, indent=2)
    os.replace(tmp.name, folder / "config.json")
    return folder
