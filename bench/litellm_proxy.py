"""The LiteLLM proxy (`litellm[proxy]`) as the benchmark's reference gateway: its config, its command
and environment (1 worker, master key, warning logs, no telemetry), and whether its PostgreSQL spend
logging can run on this machine.

Spend logging needs the Prisma CLI, a Node program that downloads Node and the Prisma engine binaries
(binaries.prisma.sh) on first use. Offline that fails, and the proxy exits at start-up when
DATABASE_URL is set without a runnable Prisma; the benchmark then runs it without a database and the
JSON says so (`litellm_spend_logging: false` and the reason)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import yaml

from bench.procs import Service

MASTER_KEY = "sk-bench-master-key"


def write_config(path: Path, upstream_base: str, model_info: dict[str, float]) -> None:
    config = {
        "model_list": [{
            "model_name": "mock",
            "litellm_params": {"model": "hosted_vllm/mock", "api_base": upstream_base, "api_key": "none"},
            "model_info": dict(model_info),
        }],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"telemetry": False, "set_verbose": False, "json_logs": False},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def spend_logging_available() -> tuple[bool, str]:
    """(can spend logging run, why not). Cheap: checks for a runnable Prisma CLI and engines."""
    if importlib.util.find_spec("prisma") is None and shutil.which("prisma") is None:
        return False, ("the prisma package/CLI is not installed; `pip install prisma` works from the registry but "
                       "its CLI then downloads Node and the Prisma query/schema engines from binaries.prisma.sh "
                       "(checked: getaddrinfo ENOTFOUND offline), and the proxy exits at start-up when "
                       "DATABASE_URL is set without a runnable Prisma")
    return True, "prisma is importable; the proxy is started with DATABASE_URL"


def service(config: Path, port: int, log_path: Path, database_url: str | None) -> Service:
    env = {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "WARNING",  # also sets uvicorn's level: no access log
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
        env["DISABLE_SCHEMA_UPDATE"] = "False"
    argv = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    return Service("litellm-proxy", argv, f"http://127.0.0.1:{port}/health/liveliness", log_path, env=env)


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {MASTER_KEY}"}


def version() -> str | None:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("litellm")
    except Exception:
        return None
