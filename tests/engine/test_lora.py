"""Multi-LoRA serving: adapters answer as their merged models do, several of them and the base model in
one batch; the prefix cache keeps their KV apart; folders that cannot be served say why; adapters load
and unload while requests run; the HTTP server lists, serves, loads and unloads them."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.build import build_engine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.lora import LoRAError
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.sequence import Sequence
from engine.tiny_lora import make_tiny_lora
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_server, sdk

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def merged_model(model_dir: Path, adapter: Path, out: Path) -> Path:
    """The base folder with the adapter's scaled B @ A added to each weight it targets (PEFT's merge)."""
    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    settings = json.loads((adapter / "adapter_config.json").read_text())
    factors = load_file(adapter / "adapter_model.safetensors")
    for name, a in factors.items():
        if ".lora_A." in name:
            target = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            weights[target] = weights[target] + settings["lora_alpha"] / settings["r"] * (
                factors[name.replace("lora_A", "lora_B")] @ a)
    save_file(weights, out / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two adapters (every projection at rank 4; q/v only at rank 8) and their merged models."""
    root = tmp_path_factory.mktemp("lora")
    made = {"a": make_tiny_lora(tiny_model_dir, root / "a", rank=4, seed=1, std=0.2),
            "b": make_tiny_lora(tiny_model_dir, root / "b", rank=8, seed=2, std=0.2, targets=("q_proj", "v_proj"))}
    return {name: (path, merged_model(tiny_model_dir, path, root / f"merged-{name}")) for name, path in made.items()}


def _engine(model_dir: Path, loras: dict[str, Path] | None = None, **config: int) -> LLMEngine:
    engine = LLMEngine(EngineConfig(num_blocks=128, max_model_len=512, **config),
                       TorchModelRunner(model_dir, 128, 16, device="cpu"))
    for name, path in (loras or {}).items():
        engine.add_lora(name, str(path))
    return engine


def _run(engine: LLMEngine, requests: list[tuple[list[int], str | None]],
         params: SamplingParams = GREEDY) -> list[Sequence]:
    seqs = [engine.add_request(f"r{len(engine.sequences)}-{i}-{random.random()}", prompt, params, lora=lora)
            for i, (prompt, lora) in enumerate(requests)]
    while engine.has_unfinished():
        engine.step()
    return seqs


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000) for _ in range(rng.randrange(10, 60))] for _ in range(n)]


def test_adapters_answer_as_their_merged_models_in_one_mixed_batch(tiny_model_dir: Path, adapters: dict) -> None:
    prompts = _prompts(6)
    which = ["a", None, "b", "a", "b", None]
    mixed = _run(_engine(tiny_model_dir, {n: p for n, (p, _) in adapters.items()}), list(zip(prompts, which, strict=True)))
    alone = {None: _run(_engine(tiny_model_dir), [(p, None) for p in prompts])}
    for name, (_, merged) in adapters.items():
        alone[name] = _run(_engine(merged), [(p, None) for p in prompts])
    for i, lora in enumerate(which):
        assert mixed[i].output_token_ids == alone[lora][i].output_token_ids, (i, lora)
    assert all(alone["a"][i].output_token_ids != alone[None][i].output_token_ids for i in range(6))
    # Teacher-forced, every prompt position's log-probability matches the merged model's.
    score = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    served = _run(_engine(tiny_model_dir, {"b": adapters["b"][0]}), [(prompts[0], "b")], score)[0]
    merged = _run(_engine(adapters["b"][1]), [(prompts[0], None)], score)[0]
    torch.testing.assert_close(torch.tensor([lp.logprob for lp in served.prompt_logprobs]),
                               torch.tensor([lp.logprob for lp in merged.prompt_logprobs]), atol=1e-4, rtol=0)


def test_the_prefix_cache_keeps_each_adapters_kv_apart(tiny_model_dir: Path, adapters: dict) -> None:
    engine = _engine(tiny_model_dir, {"a": adapters["a"][0]})
    prompt = _prompts(1, seed=5)[0] * 2  # several full blocks
    (base,) = _run(engine, [(prompt, None)])
    (first,) = _run(engine, [(prompt, "a")])
    (again,) = _run(engine, [(prompt, "a")])
    (base_again,) = _run(engine, [(prompt, None)])
    assert first.num_cached_tokens == 0  # the base model's blocks hold other KV
    assert again.num_cached_tokens >= 48 and base_again.num_cached_tokens >= 48
    (merged,) = _run(_engine(adapters["a"][1]), [(prompt, None)])
    assert first.output_token_ids == again.output_token_ids == merged.output_token_ids
    assert base.output_token_ids == base_again.output_token_ids != first.output_token_ids


def _write(folder: Path, settings: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


@pytest.mark.parametrize(("change", "reason"), [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "biases"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
    ({"r": 128}, "max_lora_rank 64"),
    ({"r": 4}, "expected (4, 64)"),
    ({"peft_type": "IA3"}, "not a LoRA"),
])
def test_adapter_settings_that_cannot_be_served_say_why(tiny_model_dir: Path, adapters: dict, tmp_path: Path,
                                                        change: dict, reason: str) -> None:
    source = adapters["b"][0]
    settings = json.loads((source / "adapter_config.json").read_text()) | change
    folder = _write(tmp_path / "bad", settings, load_file(source / "adapter_model.safetensors"))
    runner = TorchModelRunner(tiny_model_dir, 8, 16, device="cpu")
    with pytest.raises(LoRAError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        runner.load_lora(folder, 64)


def test_adapter_tensors_that_cannot_be_served_say_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = TorchModelRunner(tiny_model_dir, 8, 16, device="cpu")
    settings = {"r": 2, "lora_alpha": 4}
    prefix = "base_model.model.model.layers"
    cases = {
        "embed_tokens": {"base_model.model.model.embed_tokens.lora_A.weight": torch.zeros(2, 64)},
        "without its pair": {f"{prefix}.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64)},
        "names layer 9": {f"{prefix}.9.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64),
                          f"{prefix}.9.self_attn.q_proj.lora_B.weight": torch.zeros(64, 2)},
        "holds no LoRA factors": {},
    }
    for i, (reason, tensors) in enumerate(cases.items()):
        folder = _write(tmp_path / str(i), settings, tensors)
        with pytest.raises(LoRAError, match=reason):
            runner.load_lora(folder, 64)
    with pytest.raises(LoRAError, match="no adapter_config.json"):
        runner.load_lora(tmp_path / "missing", 64)


def test_an_adapter_unloaded_while_running_finishes_its_requests(tiny_model_dir: Path, adapters: dict) -> None:
    engine = _engine(tiny_model_dir, {"a": adapters["a"][0]}, max_loras=1)
    with pytest.raises(InvalidRequestError, match="max_loras"):
        engine.add_lora("b", str(adapters["b"][0]))
    prompt = _prompts(1, seed=9)[0]
    seq = engine.add_request("running", prompt, GREEDY, lora="a")
    for _ in range(3):
        engine.step()
    engine.remove_lora("a")
    with pytest.raises(InvalidRequestError, match="no LoRA adapter named 'a'"):
        engine.add_request("late", prompt, GREEDY, lora="a")
    assert engine.runner.lora.adapters  # type: ignore[attr-defined]  # still resident: a request runs with it
    while engine.has_unfinished():
        engine.step()
    assert not engine.runner.lora.adapters  # type: ignore[attr-defined]  # gone with its last request
    (merged,) = _run(_engine(adapters["a"][1]), [(prompt, None)])
    assert seq.output_token_ids == merged.output_token_ids
    # Loaded again under the same name: a new id, so the old id's cached blocks are not its.
    again = engine.add_lora("a", str(adapters["a"][0]))
    assert again.lora_id == 2
    (rerun,) = _run(engine, [(prompt, "a")])
    assert rerun.num_cached_tokens == 0 and rerun.output_token_ids == merged.output_token_ids


def test_a_simulated_engine_serves_no_adapters(tmp_path: Path, adapters: dict) -> None:
    from engine.roofline import RooflineStepTime
    from engine.step_time import save_profile

    save_profile(tmp_path / "h100.json", RooflineStepTime.builtin("llama-3.1-8b"))
    with pytest.raises(InvalidRequestError, match="serves no LoRA adapters"):
        build_engine(sim_profile=tmp_path / "h100.json", num_blocks=64, lora_modules={"a": str(adapters["a"][0])})


def test_served_adapters_are_models_of_the_server(tiny_model_dir: Path, adapters: dict) -> None:
    path_a, merged_a = adapters["a"]
    prompt = "The quick brown fox jumps over the lazy dog"
    with engine_server(merged_a) as url:
        expected = sdk(url).completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    with engine_server(tiny_model_dir, lora_modules={"sql": str(path_a)}) as url:
        client = sdk(url)
        models = {m.id: m for m in client.models.list().data}
        served = client.completions.create(model="sql", prompt=prompt, max_tokens=8, temperature=0)
        base = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
        with pytest.raises(openai.NotFoundError, match="serves 'tiny', 'sql'"):
            client.completions.create(model="nope", prompt=prompt, max_tokens=2)
        tokens = httpx.post(f"{url}/tokenize", json={"model": "sql", "prompt": prompt}).json()
        refused = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "b", "lora_path": "/x"})
        metrics = httpx.get(f"{url}/metrics").text
    assert set(models) == {"tiny", "sql"} and models["sql"].model_extra["parent"] == "tiny"  # type: ignore[index]
    assert models["sql"].model_extra["root"] == str(path_a)  # type: ignore[index]
    assert served.model == "sql" and served.choices[0].text == expected.choices[0].text != base.choices[0].text
    assert tokens["count"] == served.usage.prompt_tokens
    assert refused.status_code == 403 and "--allow-runtime-lora-updating" in refused.json()["error"]["message"]
    assert "pitstop_engine_lora_adapters 1.0" in metrics


def test_adapters_load_and_unload_at_run_time(tiny_model_dir: Path, adapters: dict) -> None:
    from engine.server.app import create_app
    from tests.engine.serving import serve_in_thread

    engine = build_engine(tiny_model_dir, num_blocks=64, max_model_len=256, max_loras=2)
    with serve_in_thread(create_app(engine, "tiny", allow_lora_updates=True)) as url:
        client = sdk(url)

        def post(path: str, **body: str) -> httpx.Response:
            return httpx.post(f"{url}/v1/{path}", json=body)

        loaded = post("load_lora_adapter", lora_name="b", lora_path=str(adapters["b"][0]))
        answer = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        errors = {"again": post("load_lora_adapter", lora_name="b", lora_path=str(adapters["b"][0])),
                  "base name": post("load_lora_adapter", lora_name="tiny", lora_path=str(adapters["a"][0])),
                  "no folder": post("load_lora_adapter", lora_name="c", lora_path="/nowhere"),
                  "no path": post("load_lora_adapter", lora_name="c")}
        unloaded = post("unload_lora_adapter", lora_name="b")
        gone = post("unload_lora_adapter", lora_name="b")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        models = [m.id for m in client.models.list().data]
    assert loaded.status_code == 200 and "added successfully" in loaded.text and answer.model == "b"
    assert {k: r.status_code for k, r in errors.items()} == {"again": 400, "base name": 400, "no folder": 400,
                                                              "no path": 400}
    assert "already loaded" in errors["again"].json()["error"]["message"]
    assert "no adapter_config.json" in errors["no folder"].json()["error"]["message"]
    assert unloaded.status_code == 200 and gone.status_code == 404 and models == ["tiny"]
