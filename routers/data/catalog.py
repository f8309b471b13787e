"""Data sets by name, read from the shared data folder (never copied into the repository).

`routerbench`, `mmlu`, `gsm8k`, `mt_bench`, `llmrouter` name the public sets under the data root
(default `../shared/data` from the repository root, or $PITSTOP_DATA); `outcomes:<path>` names a
Pitstop export file. The wide view carries each source file's sha256 as its training data reference."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from routers.data.llmrouter import llmrouter_files, load_llmrouter
from routers.data.outcomes import export_traffic, load_outcomes
from routers.data.routellm import (
    gsm8k_files,
    load_gsm8k,
    load_mmlu,
    load_mt_bench,
    mmlu_files,
    mt_bench_files,
)
from routers.data.routerbench import load_routerbench, routerbench_files
from routers.data.table import RoutingData, file_digest, to_wide

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataUnavailable(FileNotFoundError):
    """The shared data folder (or one of its files) is not on this machine."""


@dataclass(frozen=True)
class DatasetSource:
    folder: str
    load: Callable[[Path], pa.Table]
    files: Callable[[Path], list[Path]]


DATASETS: dict[str, DatasetSource] = {
    "routerbench": DatasetSource("routerbench_subset", load_routerbench, routerbench_files),
    "mmlu": DatasetSource("routellm", load_mmlu, mmlu_files),
    "gsm8k": DatasetSource("routellm", load_gsm8k, gsm8k_files),
    "mt_bench": DatasetSource("routellm", load_mt_bench, mt_bench_files),
    "llmrouter": DatasetSource("llmrouter", load_llmrouter, llmrouter_files),
}


def data_root() -> Path:
    return Path(os.environ.get("PITSTOP_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(paths: list[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise DataUnavailable(f"{what}: data files missing ({', '.join(missing) or 'none found'}); "
                              f"the shared data lives in ../shared/data (or set PITSTOP_DATA)")


def load_long(name: str, root: Path | None = None) -> tuple[pa.Table, list[Path]]:
    if name.startswith("outcomes:"):
        path = Path(name.removeprefix("outcomes:"))
        _require([path], name)
        return load_outcomes(path), [path]
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)} or outcomes:<export file>")
    source = DATASETS[name]
    folder = (root or data_root()) / source.folder
    files = source.files(folder)
    _require(files, name)
    return source.load(folder), files


def load_dataset(name: str, root: Path | None = None) -> RoutingData:
    table, files = load_long(name, root)
    return to_wide(table, name=name, source=file_digest(files))


def traffic_rows(name: str, route_group: str | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """Requests to calibrate a route group on, each a dict with at least its `prompt`: an export
    file's served requests as exported (`outcomes:<path>`, the group's own where it has any: with
    the model, cost and verify outcome of each), or a data set's held-out prompts (its test split
    where it publishes one, else all of them)."""
    if name.startswith("outcomes:"):
        path = Path(name.removeprefix("outcomes:"))
        _require([path], name)
        return export_traffic(path, route_group)
    data = load_dataset(name, root)
    test = data.split("test")
    return [{"prompt": p} for p in (test.prompts if len(test) else data.prompts)]


def traffic_prompts(name: str, route_group: str | None = None, root: Path | None = None) -> list[str]:
    return [r["prompt"] for r in traffic_rows(name, route_group, root)]
