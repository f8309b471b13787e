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


@pytest.fixture(scope="session")
def tiny_gemma3_vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 with images (56-pixel images, 8 x 8 patches pooled to 16 tokens each; a 24-token
    sliding layer and a full one)."""
    from engine.tiny_gemma3_vision import make_tiny_gemma3_vision

    return make_tiny_gemma3_vision(tmp_path_factory.mktemp("tiny_gemma3_vision"))
