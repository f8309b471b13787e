"""Pitstop's gateway as a system under test: its YAML config (the mock as its one model, outcome logging
to the given storage URL) and its `pitstop serve` command (1 process, warning logs)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bench.procs import Service

ROOT = Path(__file__).resolve().parents[1]


def available() -> tuple[bool, str]:
    """Whether `pitstop serve` exists in this checkout (the benchmark predates the gateway)."""
    if importlib.util.find_spec("gateway.app") is None:
        return False, "gateway/app.py does not exist yet"
    probe = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return False, f"`pitstop serve --help` failed: {(probe.stderr or probe.stdout)[-500:]}"
    return True, ""


def write_config(path: Path, upstream_base: str, model_info: dict, storage_url: str, port: int,
                 spool_path: Path, model: str = "hosted_vllm/mock", router_artifact: Path | None = None) -> dict:
    """One deployment `mock`; with `router_artifact`, a second one (`mock-small`, same upstream, a tenth of
    the price) and route group `auto` over both on that trained router: the routed request path."""
    models = [{
        "model_name": "mock",
        "litellm_params": {"model": model, "api_base": upstream_base, "api_key": "none"},
        "model_info": {**model_info, "tier": "strong", "router_model": "gpt-4-1106-preview"},
    }]
    groups = []
    if router_artifact is not None:
        cheap = {k: v / 10 for k, v in model_info.items()}
        models.append({"model_name": "mock-small",
                       "litellm_params": {"model": model.replace("/mock", "/mock-small"), "api_base": upstream_base,
                                          "api_key": "none"},
                       "model_info": {**cheap, "tier": "weak", "router_model": "mistralai/mistral-7b-chat"}})
        groups.append({"name": "auto", "models": ["mock", "mock-small"], "router": "pitstop",
                       "router_artifact": str(router_artifact), "cost_preference": 0.5})
    config = {
        "model_list": models,
        "route_groups": groups,
        "storage": {"url": storage_url, "store_text": True, "spool_path": str(spool_path)},
        "server": {"host": "127.0.0.1", "port": port},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def router_facts(artifact: Path) -> dict:
    """The artifact's manifest essentials for the JSON (name, version, training data, held-out metrics)."""
    manifest = json.loads(Path(str(artifact) + ".json").read_text())
    return {k: manifest.get(k) for k in ("name", "family", "version", "training_data", "metrics")}


def service(config: Path, port: int, log_path: Path, workdir: Path) -> Service:
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "WARNING", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return Service("pitstop", argv, f"http://127.0.0.1:{port}/readyz", log_path, env=env, cwd=workdir)


def version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "storage"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        base = dist_version("pitstop")
    except PackageNotFoundError:
        base = "unknown"
    return f"{base}+git.{rev}{'.dirty' if dirty else ''}" if rev else base
