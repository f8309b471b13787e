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


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL (4-pixel patches merged 2 x 2: a 32 x 24 picture is 12 tokens; M-RoPE sections
    2 / 3 / 3 of a 16-wide head)."""
    from engine.tiny_qwen2_5_vl import make_tiny_qwen2_5_vl

    return make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))
