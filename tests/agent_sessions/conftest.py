"""Fixtures for the agent-session tests: one tiny random model folder per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
