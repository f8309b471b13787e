"""`pitstop engine make-tiny-model --family deepseek_v2 | deepseek_v3 | qwen2_moe` (engine/tiny_moe.py): a folder
transformers saved with its own classes, over the engine's tiny tokenizer, that the engine runs token for token as
transformers does; and a Kimi-K2 config (`model_type: kimi_k2`, DeepSeek-V3's architecture) loads as DeepSeek-V3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from engine.model.config import ModelConfig
from engine.tiny_model import EOS
from engine.tiny_moe import make_tiny_moe_model
from engine.torch_runner import TorchModelRunner
from gateway.cli import main
from tests.engine.hf_checkpoints import random_prompt, runner_greedy, transformers_greedy


@pytest.mark.parametrize("family", ["deepseek_v2", "deepseek_v3", "qwen2_moe"])
def test_the_cli_writes_a_folder_the_engine_runs_as_transformers(family: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / family
    assert main(["engine", "make-tiny-model", str(out), "--family", family, "--layers", "2", "--hidden", "32",
                 "--experts", "4", "--seed", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family and config["num_hidden_layers"] == 2 and config["hidden_size"] == 32
    assert config.get("n_routed_experts", config.get("num_experts")) == 4
    assert config["eos_token_id"] == Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id(EOS)
    prompt = random_prompt(20)
    expected = transformers_greedy(out, prompt, 8)
    assert len(set(expected)) > 2
    assert runner_greedy(TorchModelRunner(out, num_blocks=32, block_size=4, device="cpu"), prompt, 8) == expected


def test_a_kimi_k2_config_loads_as_deepseek_v3(tmp_path: Path) -> None:
    v3 = make_tiny_moe_model(tmp_path / "v3", "deepseek_v3", layers=2, hidden=32, experts=4)
    kimi = Path(shutil.copytree(v3, tmp_path / "kimi"))
    config = json.loads((kimi / "config.json").read_text()) | {"model_type": "kimi_k2"}  # as Kimi-K2's says
    (kimi / "config.json").write_text(json.dumps(config))
    assert ModelConfig.from_dir(kimi) == ModelConfig.from_dir(v3)
    prompt = random_prompt(20, seed=5)
    runner = TorchModelRunner(kimi, num_blocks=32, block_size=4, device="cpu")
    assert runner.config.mla and runner_greedy(runner, prompt, 8) == transformers_greedy(v3, prompt, 8)
