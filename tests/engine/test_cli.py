"""`pitstop engine ...`: the parser, make-tiny-model in process, and `serve` as a real subprocess
answering the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from engine.cli import make_tiny_model_command, profile_command, serve_command
from engine.cli_values import parse_bytes
from gateway.cli import build_parser, main
from tests.engine.serving import engine_serve_process


def test_parser_dispatches_engine_subcommands():
    parser = build_parser()
    args = parser.parse_args(["engine", "serve", "--sim", "p.json", "--kv-cache-memory", "2GiB", "--port", "9"])
    assert args.handler is serve_command and args.kv_cache_memory == 2 << 30 and args.model is None
    assert args.host_kv_memory == 0  # no host KV tier unless asked
    assert parser.parse_args(["engine", "serve", "--model", "m", "--host-kv-memory", "64GiB"]).host_kv_memory == 64 << 30
    assert parser.parse_args(["engine", "profile", "--model", "m", "--out", "o.json"]).handler is profile_command
    assert args.kv_cache_dtype == "auto"
    fp8 = parser.parse_args(["engine", "serve", "--model", "m", "--kv-cache-dtype", "fp8", "--calculate-kv-scales"])
    assert fp8.kv_cache_dtype == "fp8" and fp8.calculate_kv_scales and not args.calculate_kv_scales
    assert parser.parse_args(["engine", "profile", "--model", "m", "--out", "o", "--kv-cache-dtype", "fp8_e5m2"]
                             ).kv_cache_dtype == "fp8_e5m2"
    with pytest.raises(SystemExit):
        parser.parse_args(["engine", "serve", "--model", "m", "--kv-cache-dtype", "int8"])
    lora = parser.parse_args(["engine", "serve", "--model", "m", "--lora-modules", "sql=/a/sql", "chat=b",
                              "--max-loras", "2", "--allow-runtime-lora-updating"])
    assert lora.lora_modules == [("sql", "/a/sql"), ("chat", "b")] and lora.max_loras == 2
    assert lora.allow_runtime_lora_updating and not args.allow_runtime_lora_updating and args.lora_modules == []
    with pytest.raises(SystemExit):
        parser.parse_args(["engine", "serve", "--model", "m", "--lora-modules", "no-path"])
    with pytest.raises(SystemExit):
        parser.parse_args(["engine", "serve", "--model", "m", "--sim", "p.json"])
    with pytest.raises(SystemExit):
        parser.parse_args(["engine", "serve", "--model", "m", "--num-blocks", "4", "--kv-cache-memory", "1G"])
    with pytest.raises(SystemExit):
        parser.parse_args(["engine"])


def test_speculative_config_flag(capsys: pytest.CaptureFixture):
    parser = build_parser()
    args = parser.parse_args(["engine", "serve", "--model", "m", "--speculative-config",
                              '{"method": "ngram", "num_speculative_tokens": 6, "prompt_lookup_max": 3}'])
    spec = args.speculative_config
    assert (spec.method, spec.num_speculative_tokens, spec.prompt_lookup_max, spec.prompt_lookup_min) == ("ngram", 6, 3, 2)
    assert parser.parse_args(["engine", "serve", "--model", "m"]).speculative_config is None
    goodput = parser.parse_args(["engine", "serve", "--model", "m", "--speculative-config",
                                 '{"draft_policy": "goodput", "step_time_profile": "p.json"}']).speculative_config
    assert (goodput.draft_policy, goodput.step_time_profile) == ("goodput", "p.json")
    drafted = parser.parse_args(["engine", "serve", "--model", "m", "--speculative-config",
                                 '{"model": "draft", "num_speculative_tokens": 3}']).speculative_config
    assert (drafted.method, drafted.model, drafted.num_speculative_tokens) == ("draft_model", "draft", 3)
    eagle = parser.parse_args(["engine", "serve", "--model", "m", "--speculative-config",
                               '{"method": "eagle", "model": "head", "num_speculative_tokens": 2}']).speculative_config
    assert (eagle.method, eagle.model, eagle.num_speculative_tokens) == ("eagle", "head", 2)
    for bad, reason in (("[4]", "a JSON object"), ('{"method": "medusa"}', "not one of ngram, draft_model, eagle"),
                        ('{"method": "eagle"}', "method 'eagle' drafts with a model"),
                        ('{"draft_policy": "greedy"}', "not one of fixed, goodput"),
                        ('{"num_tokens": 4}', "num_tokens"), ("{", "Expecting"),
                        ('{"method": "draft_model"}', "give its folder as `model`")):
        with pytest.raises(SystemExit):
            parser.parse_args(["engine", "serve", "--model", "m", "--speculative-config", bad])
        err = capsys.readouterr().err
        assert "not a speculative config" in err and reason in err, err


def test_roofline_writes_a_profile_for_a_model_folder_or_a_builtin(tmp_path: Path, tiny_model_dir: Path,
                                                                  capsys: pytest.CaptureFixture):
    from engine.roofline import GPUS, ModelShape, RooflineStepTime
    from engine.step_time import load_profile

    out = tmp_path / "tiny-h200.json"
    assert main(["engine", "roofline", "--model", str(tiny_model_dir), "--gpu", "H200", "--out", str(out)]) == 0
    model = load_profile(out)
    shape = ModelShape.from_hf_config(json.loads((tiny_model_dir / "config.json").read_text()), name=tiny_model_dir.name)
    assert isinstance(model, RooflineStepTime) and model.model == shape and model.gpu == GPUS["H200"]
    assert main(["engine", "roofline", "--builtin", "llama-3.1-70b", "--gpu", "H100-SXM", "--tensor-parallel", "2",
                 "--out", str(out)]) == 0
    assert load_profile(out) == RooflineStepTime.builtin("llama-3.1-70b", "H100-SXM", 2)
    assert main(["engine", "roofline", "--builtin", "llama-3.1-8b", "--gpu", "H100-SXM", "--kv-cache-dtype", "fp8",
                 "--out", str(out)]) == 0
    fp8 = load_profile(out)
    assert isinstance(fp8, RooflineStepTime) and fp8.model.kv_bytes == 1
    assert fp8 == RooflineStepTime.builtin("llama-3.1-8b", kv_cache_dtype="fp8")
    assert main(["engine", "roofline", "--builtin", "llama-3.1-70b", "--gpu", "H100-SXM", "--out", str(out)]) == 2
    assert "no room for KV" in capsys.readouterr().err
    assert main(["engine", "roofline", "--model", str(tmp_path), "--gpu", "H100-SXM", "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["engine", "roofline", "--builtin", "llama-3.1-8b", "--gpu", "B200", "--out", str(out)])


def test_parse_bytes():
    assert parse_bytes("1024") == 1024
    assert parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("1.5G") == 1_500_000_000
    assert parse_bytes("4gib") == 4 << 30


def test_make_tiny_model_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "m"
    assert main(["engine", "make-tiny-model", str(out), "--layers", "1", "--hidden", "32", "--heads", "2",
                 "--kv-heads", "1", "--seed", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 32
    assert str(out) in capsys.readouterr().out
    assert build_parser().parse_args(["engine", "make-tiny-model", "x"]).handler is make_tiny_model_command


def test_serve_without_a_model_folder_or_profile_says_so(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["engine", "serve", "--model", str(tmp_path / "nowhere")]) == 2
    assert "is not a model folder (no config.json" in capsys.readouterr().err
    assert main(["engine", "serve", "--sim", str(tmp_path / "missing.json")]) == 2
    assert "step-time profile" in capsys.readouterr().err



def test_serve_with_adapters_it_cannot_serve_says_so(tmp_path: Path, tiny_model_dir: Path,
                                                     capsys: pytest.CaptureFixture):
    assert main(["engine", "serve", "--model", str(tiny_model_dir), "--served-model-name", "tiny",
                 "--lora-modules", "tiny=/a"]) == 2
    assert "--lora-modules names must differ" in capsys.readouterr().err
    assert main(["engine", "serve", "--model", str(tiny_model_dir), "--num-blocks", "8",
                 "--lora-modules", f"sql={tmp_path}"]) == 2
    assert "not a LoRA adapter folder" in capsys.readouterr().err
    assert main(["engine", "make-tiny-lora", str(tmp_path / "lora"), "--model", str(tiny_model_dir), "--rank", "4"]) == 0
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"] == 4


def test_serve_subprocess_answers_the_openai_sdk(tiny_model_dir: Path):
    with engine_serve_process("--model", str(tiny_model_dir), "--num-blocks", "64", "--served-model-name",
                              "tiny", "--log-level", "warning") as (url, process):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                             max_tokens=3, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"
    assert process.returncode == 0, process.stdout.read().decode()
