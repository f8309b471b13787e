"""The embedded default (config/pitstop.yaml) as the embedded tests run it: its config with the model
folders, storage and router artifacts moved under a temporary root and no background training, the
names of its two local tiny models and its encoder, and the request field that keeps their answers from ending early."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.gateway.harness import REPO_ROOT

LOCAL_MODELS = ["tiny-small", "tiny-large"]
ENCODER_MODEL = "minilm"  # all-MiniLM-L6-v2 in the gateway's process: embeddings, and reranks by them
# The tiny models pick EOS about once in 300 tokens: answers whose length a test counts ignore it.
NO_EOS = {"ignore_eos": True}


def embedded_config(root: Path) -> dict:
    raw = yaml.safe_load((REPO_ROOT / "config" / "pitstop.yaml").read_text())
    for entry in raw["model_list"]:
        params = entry["litellm_params"]
        if "model_dir" in params:
            params["model_dir"] = str(root / "models" / entry["model_name"])
    raw["storage"] |= {"url": f"sqlite:///{root / 'pitstop.db'}", "spool_path": str(root / "spool.jsonl")}
    for group in raw["route_groups"]:  # no background training here: tests/gateway/test_gateway_learned_routing.py
        group["router_artifact"] = str(root / "routers" / f"{group['name']}.joblib")
        group.pop("train_data", None)
    return raw
