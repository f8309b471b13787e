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


def test_a_config_that_needs_no_provider_does_not_import_litellm(tmp_path: Path) -> None:
    # Prices are resolved when the config is parsed, from litellm's bundled map read as JSON
    # (gateway/price_map.py): a model without prices, Pitstop's engines, vLLM servers over HTTP never import it.
    models = [{"model_name": "priced", "litellm_params": {"model": "pitstop-engine/m", "api_base": "http://h:1/v1"},
               "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
              {"model_name": "engine", "litellm_params": {"model": "pitstop-engine/e", "api_base": "http://h:1/v1"}},
              {"model_name": "vllm", "litellm_params": {"model": "hosted_vllm/v", "api_base": "http://h:1/v1"}},
              {"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": "http://h:1/v1"}}]
    raw = {"model_list": models, "storage": {"url": f"sqlite:///{tmp_path / 'g.db'}"}}
    code = ("from gateway.config import parse_settings\nfrom gateway.app import create_app\n"
            f"settings = parse_settings({raw!r})\ncreate_app(settings)\n"
            "assert settings.model_list[3].model_info.price_source == 'litellm'")
    assert "litellm" not in _modules_after(code)
