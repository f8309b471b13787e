"""rankers/onnx_cache.py: a start with a cached graph scores exactly as one that builds it, without
importing onnx; stale, corrupt or refused files are rebuilt; files appear only by rename."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rankers import onnx_cache
from rankers.onnx_bert import WORD_TABLE, OnnxBert

REPO_ROOT = Path(__file__).resolve().parents[2]
HIDDEN, INNER, LAYERS = 24, 48, 2  # 12 heads of 2: the smallest encoder the graph builder takes
IDS = [[1, 2, 3], [7], [4, 9, 9, 2, 0, 5, 31]]


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """BertModel state-dict names with random values, the word table included."""
    rng = np.random.default_rng(seed)
    shapes = {WORD_TABLE: (32, HIDDEN), "embeddings.position_embeddings.weight": (16, HIDDEN),
              "embeddings.token_type_embeddings.weight": (2, HIDDEN)}
    norms = ["embeddings.LayerNorm"]
    for i in range(LAYERS):
        layer = f"encoder.layer.{i}"
        for name, (rows, cols) in {"attention.self.query": (HIDDEN, HIDDEN), "attention.self.key": (HIDDEN, HIDDEN),
                                   "attention.self.value": (HIDDEN, HIDDEN), "attention.output.dense": (HIDDEN, HIDDEN),
                                   "intermediate.dense": (INNER, HIDDEN), "output.dense": (HIDDEN, INNER)}.items():
            shapes[f"{layer}.{name}.weight"], shapes[f"{layer}.{name}.bias"] = (rows, cols), (rows,)
        norms += [f"{layer}.attention.output.LayerNorm", f"{layer}.output.LayerNorm"]
    weights = {name: rng.normal(0, 0.2, shape).astype(np.float32) for name, shape in shapes.items()}
    for norm in norms:
        weights[f"{norm}.weight"] = 1 + rng.normal(0, 0.1, HIDDEN).astype(np.float32)
        weights[f"{norm}.bias"] = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    return weights


def outputs(encoder: OnnxBert) -> list[np.ndarray]:
    return [encoder(ids) for ids in IDS]


def assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()  # bitwise


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "onnx"
    monkeypatch.setenv("PITSTOP_ONNX_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def uncached() -> list[np.ndarray]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PITSTOP_ONNX_CACHE", "off")
        encoder = OnnxBert(tiny_weights(), LAYERS, int8=True)
    assert not encoder.from_cache
    return outputs(encoder)


def only_file(folder: Path) -> Path:
    files = sorted(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".onnx", files  # no temporary file left behind
    return files[0]


def test_a_cached_graph_scores_exactly_as_a_built_one(cache: Path, uncached: list[np.ndarray]) -> None:
    built = OnnxBert(tiny_weights(), LAYERS, int8=True)
    assert not built.from_cache and only_file(cache)
    hit = OnnxBert(tiny_weights(), LAYERS, int8=True)
    assert hit.from_cache and hit.op_types == built.op_types and "DynamicQuantizeMatMul" in hit.op_types
    assert_same(outputs(built), uncached)
    assert_same(outputs(hit), uncached)


def test_a_start_with_the_graph_cached_does_not_import_onnx(cache: Path) -> None:
    script = ("import json, sys\nfrom tests.rankers.test_onnx_cache import LAYERS, tiny_weights\n"
              "from rankers.onnx_bert import OnnxBert\n"
              "encoder = OnnxBert(tiny_weights(), LAYERS)\n"
              "print(json.dumps([encoder.from_cache, 'onnx' in sys.modules, encoder([1, 2]).tolist()]))")

    def start() -> list:
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                   "PITSTOP_ONNX_CACHE": str(cache)})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = start(), start()
    assert first[:2] == [False, True]  # built: onnx imported
    assert second[:2] == [True, False]
    assert second[2] == first[2]


def test_weights_options_and_versions_are_in_the_key(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tiny_weights()
    OnnxBert(weights, LAYERS, int8=True)
    changed = dict(weights)
    changed["encoder.layer.1.output.dense.bias"] = weights["encoder.layer.1.output.dense.bias"] + 1e-3
    assert not OnnxBert(changed, LAYERS, int8=True).from_cache
    assert not OnnxBert(weights, LAYERS, int8=False).from_cache
    assert not OnnxBert(weights, 1, int8=True).from_cache
    # The word table stays outside the graph: another one is the same graph.
    assert OnnxBert(weights | {WORD_TABLE: weights[WORD_TABLE] + 1}, LAYERS, int8=True).from_cache
    real_version = onnx_cache._version
    monkeypatch.setattr(onnx_cache, "_version", lambda package: "9.9" if package == "onnx" else real_version(package))
    assert not OnnxBert(weights, LAYERS, int8=True).from_cache
    monkeypatch.setattr(onnx_cache, "_version", real_version)
    monkeypatch.setattr(onnx_cache, "BUILDER", Path(onnx_cache.__file__))  # another builder source
    assert not OnnxBert(weights, LAYERS, int8=True).from_cache
    assert len(list(cache.glob("*.onnx"))) == 6


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other_key"])
def test_a_damaged_file_is_rebuilt_not_used(cache: Path, uncached: list[np.ndarray], damage: str) -> None:
    OnnxBert(tiny_weights(), LAYERS, int8=True)
    path = only_file(cache)
    data = bytearray(path.read_bytes())
    if damage == "flip":  # one bit of a bias: ONNX Runtime would load it and score differently
        at = data.find(tiny_weights()["encoder.layer.1.output.dense.bias"].tobytes())
        assert at > 0
        data[at + 2] ^= 0x40
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:  # a sound file stored under another graph's key
        OnnxBert(tiny_weights(seed=1), LAYERS, int8=True)
        data = bytearray(next(p for p in cache.glob("*.onnx") if p != path).read_bytes())
    path.write_bytes(bytes(data))
    rebuilt = OnnxBert(tiny_weights(), LAYERS, int8=True)
    assert not rebuilt.from_cache
    assert_same(outputs(rebuilt), uncached)
    hit = OnnxBert(tiny_weights(), LAYERS, int8=True)  # and written again, sound
    assert hit.from_cache
    assert_same(outputs(hit), uncached)


def test_a_file_onnx_runtime_refuses_is_rebuilt(cache: Path, uncached: list[np.ndarray],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    OnnxBert(tiny_weights(), LAYERS, int8=True)
    path = only_file(cache)
    key = path.stem
    onnx_cache._write(cache, key, b"not a protobuf", ["MatMul"])  # sound as a file, not as a graph
    rebuilt = OnnxBert(tiny_weights(), LAYERS, int8=True)
    assert not rebuilt.from_cache
    assert_same(outputs(rebuilt), uncached)
    assert OnnxBert(tiny_weights(), LAYERS, int8=True).from_cache


def test_files_appear_only_by_rename_from_a_temporary_in_the_same_folder(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def replace(source: str, target: Path) -> None:
        assert not Path(target).exists()  # the final name is never opened for writing
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(onnx_cache.os, "replace", replace)
    OnnxBert(tiny_weights(), LAYERS, int8=True)
    path = only_file(cache)
    assert len(renames) == 1 and renames[0][1] == path
    assert renames[0][0].parent == cache and renames[0][0].name.endswith(".tmp") and not renames[0][0].exists()


def test_a_cache_that_cannot_be_written_still_serves(cache: Path, uncached: list[np.ndarray],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(source: str, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(onnx_cache.os, "replace", fail)
    encoder = OnnxBert(tiny_weights(), LAYERS, int8=True)
    assert_same(outputs(encoder), uncached)
    assert list(cache.iterdir()) == []  # the temporary file is removed


def test_the_folder_keeps_the_most_recently_used_graphs(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_cache, "KEEP", 2)
    paths = [cache / f"{onnx_cache.graph_key(tiny_weights(seed), 1, True, WORD_TABLE)}.onnx" for seed in range(3)]
    for seed in (0, 1):
        OnnxBert(tiny_weights(seed), 1)
        os.utime(paths[seed], (100 + seed, 100 + seed))  # 0 older than 1
    assert OnnxBert(tiny_weights(0), 1).from_cache  # a hit: now the most recently used
    OnnxBert(tiny_weights(2), 1)
    assert sorted(cache.glob("*.onnx")) == sorted([paths[0], paths[2]])
