from __future__ import annotations

from pathlib import Path

import pytest

from routers.data.catalog import data_root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "alpaca_eval_outputs" / "outputs.jsonl").is_file():
        pytest.skip(f"shared data not found at {root} (expected ../shared/data or $PITSTOP_DATA)")
    return root
