from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from routers.data.catalog import data_root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "alpaca_eval_outputs" / "outputs.jsonl").is_file():
        pytest.skip(f"shared data not found at {root} (expected ../shared/data or $PITSTOP_DATA)")
    return root


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The rankers these tests train build graphs of their own: cached in a throwaway folder, they do not
    # push the checkout's own (the default ranker's, the encoder's) out of var/rankers/onnx.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PITSTOP_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
        yield
