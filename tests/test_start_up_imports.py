"""What a server's start imports, checked in a fresh interpreter: libraries that take a second or more to
import are imported only where they are used (bench/startup.py times the starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    """Which top-level modules are imported once `code` has run in a new interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_gateway_app_does_not_import_what_only_some_features_use() -> None:
    # mcp: only responses with MCP tools; torch: only in-process engines; litellm: only providers it serves;
    # onnx: only building the ranker's graph, at load; sklearn and lightgbm: only training, and loading a
    # router artifact that holds their models.
    leaked = {"mcp", "mcp_types", "torch", "litellm", "onnx", "sklearn", "lightgbm"} & _modules_after(
        "import gateway.app")
    assert not leaked, f"importing gateway.app imported {sorted(leaked)}"


def test_loading_a_model_does_not_import_torch_dynamo(tmp_path: Path) -> None:
    # nn.Embedding's random init on the meta device imports torch._dynamo, a second or two of every
    # engine's start (and every tensor-parallel rank's); the table comes from the checkpoint anyway.
    model_dir = make_tiny_model(tmp_path / "tiny")
    imported = _modules_after("import torch\nfrom engine.model.loader import load_model\n"
                              f"load_model({json.dumps(str(model_dir))}, torch.device('cpu'), torch.float32)")
    assert "engine.model.llama" in imported
    assert "torch._dynamo" not in imported
