"""Splits by prompt, never by row: every model's answer to a held-out prompt is held out with it.

Assignment hashes the prompt id with a salt, so a prompt stays on its side whatever else is loaded."""

from __future__ import annotations

import hashlib

import numpy as np

from rankers.data import LengthData


def _unit(prompt_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_mask(data: LengthData, test_fraction: float = 0.2, salt: str = "pitstop-rankers") -> np.ndarray:
    """True for the rows of held-out prompts."""
    return np.array([_unit(p, salt) < test_fraction for p in data.prompt_ids], dtype=bool)


def split_by_prompt(data: LengthData, test_fraction: float = 0.2, salt: str = "pitstop-rankers"
                    ) -> tuple[LengthData, LengthData]:
    is_test = split_mask(data, test_fraction, salt)
    return data.rows(~is_test), data.rows(is_test)


def prompt_folds(data: LengthData, folds: int, salt: str = "pitstop-rankers-cv") -> np.ndarray:
    """Fold number per row, equal for every row of one prompt."""
    return np.array([int(_unit(p, salt) * folds) for p in data.prompt_ids], dtype=np.int64)
