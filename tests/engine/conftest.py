"""Shared fixtures for the engine tests: one tiny random Llama model folder per test session, and a tiny LLaVA."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA (CLIP tower, 56-pixel images: 16 feature tokens each), transformers 5's key layout."""
    from engine.tiny_llava import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), image_size=56)
