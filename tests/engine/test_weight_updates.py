"""New weights for a running engine (engine/weight_updates.py): a checkpoint of the same model copied in
place answers as a fresh engine on it does, on one rank and on two, with LoRA adapters loaded and with an
int8 model quantized at load; every cached prefix forgotten (pins, host and disk tiers too, the disk's
index under the new folder's fingerprint); another model or a broken checkpoint refused with the old
weights served still; a rollback that fails too stops the instance."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from engine.config import EngineConfig
from engine.disk_index import model_files_digest
from engine.llm_engine import LLMEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.tiny_lora import make_tiny_lora
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from engine.weight_updates import EngineBusyError, WeightsLostError, update_weights

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`a` and `b`: the same tiny model with other random weights; `other`: a wider one."""
    root = tmp_path_factory.mktemp("weights")
    return {"a": make_tiny_model(root / "a", seed=0), "b": make_tiny_model(root / "b", seed=1),
            "other": make_tiny_model(root / "other", seed=0, hidden=128)}


def engine_on(model_dir: Path, tp: int = 1, host: int = 0, disk_path: Path | None = None, **runner: object) -> LLMEngine:
    disk = 32 if disk_path is not None else 0
    config = EngineConfig(num_blocks=64, max_model_len=512, max_num_batched_tokens=64, num_host_blocks=host,
                          num_disk_blocks=disk)
    return LLMEngine(config, TorchModelRunner(model_dir, 64, 16, device="cpu", tensor_parallel_size=tp,
                                              num_host_blocks=host, disk_kv_path=disk_path, num_disk_blocks=disk,
                                              **runner))  # type: ignore[arg-type]


def prompts(n: int = 3) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(1000) for _ in range(rng.randrange(20, 50))] for _ in range(n)]


def answers(engine: LLMEngine, asked: list[list[int]], lora: str | None = None) -> list[list[int]]:
    seqs = [engine.add_request(f"r{len(engine.sequences)}-{random.random()}", p, GREEDY, lora=lora) for p in asked]
    while engine.has_unfinished():
        engine.step()
    return [s.output_token_ids for s in seqs]


def test_new_weights_answer_as_a_fresh_engine_on_them(models: dict[str, Path]) -> None:
    asked = prompts()
    fresh_b = answers(engine_on(models["b"]), asked)
    engine = engine_on(models["a"])
    on_a = answers(engine, asked)
    assert on_a != fresh_b
    first = engine.add_request("cached", asked[0], GREEDY, session_id="agent", pin_ttl_s=60.0)
    while engine.has_unfinished():
        engine.step()
    assert first.num_cached_tokens > 0  # the prompt was cached: the update must forget it
    assert engine.block_manager.stats().pins == 1  # and the session's pin
    update = update_weights(engine, str(models["b"]))
    assert update.forgotten_blocks > 0 and update.model_path == str(models["b"])
    assert engine.block_manager.stats().pins == 0 and not engine.block_manager.hash_to_block
    again = engine.add_request("again", asked[0], GREEDY)
    while engine.has_unfinished():
        engine.step()
    assert again.num_cached_tokens == 0
    assert answers(engine, asked) == fresh_b
    update_weights(engine, str(models["a"]))
    assert answers(engine, asked) == on_a


def test_another_model_or_a_broken_checkpoint_leaves_the_old_weights(models: dict[str, Path], tmp_path: Path) -> None:
    asked = prompts(2)
    engine = engine_on(models["a"])
    on_a = answers(engine, asked)
    with pytest.raises(InvalidRequestError, match="differs in hidden_size") as raised:
        update_weights(engine, str(models["other"]))
    assert raised.value.param == "model_path"
    with pytest.raises(InvalidRequestError, match="not a model folder"):
        update_weights(engine, str(tmp_path))
    # Every tensor but the last layer's norm: most are copied before the loader finds one missing.
    broken = tmp_path / "broken"
    shutil.copytree(models["b"], broken)
    tensors = load_file(broken / "model.safetensors")
    missing = max(name for name in tensors if "post_attention_layernorm" in name)
    save_file({k: v for k, v in tensors.items() if k != missing}, broken / "model.safetensors")
    with pytest.raises(InvalidRequestError, match="served still"):
        update_weights(engine, str(broken))
    assert answers(engine, asked) == on_a  # rolled back to a's weights


def test_a_failed_rollback_is_fatal(models: dict[str, Path], tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(models["a"], served)
    engine = engine_on(served)
    broken = tmp_path / "broken"
    shutil.copytree(models["b"], broken)
    tensors = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, broken / "model.safetensors")
    (served / "model.safetensors").unlink()  # the folder served before is gone: nothing to roll back to
    with pytest.raises(WeightsLostError, match="failed too"):
        update_weights(engine, str(broken))


def test_requests_in_flight_keep_the_weights(models: dict[str, Path]) -> None:
    engine = engine_on(models["a"])
    engine.add_request("running", prompts(1)[0], GREEDY)
    engine.step()
    with pytest.raises(EngineBusyError, match="pause"):
        update_weights(engine, str(models["b"]))


def test_lora_adapters_apply_to_the_new_base(models: dict[str, Path], tmp_path: Path) -> None:
    asked = prompts(2)
    adapter = make_tiny_lora(models["a"], tmp_path / "adapter", rank=4, seed=1, std=0.2)
    fresh = engine_on(models["b"])
    fresh.add_lora("sql", str(adapter))
    expected_base, expected_lora = answers(fresh, asked), answers(fresh, asked, lora="sql")
    engine = engine_on(models["a"])
    engine.add_lora("sql", str(adapter))
    answers(engine, asked, lora="sql")  # the projections are wrapped now
    update_weights(engine, str(models["b"]))
    assert answers(engine, asked) == expected_base
    assert answers(engine, asked, lora="sql") == expected_lora != expected_base


def test_int8_weights_are_quantized_from_the_new_checkpoint(models: dict[str, Path]) -> None:
    asked = prompts(2)
    expected = answers(engine_on(models["b"], quantization="int8"), asked)
    engine = engine_on(models["a"], quantization="int8")
    update_weights(engine, str(models["b"]))
    assert answers(engine, asked) == expected


def test_two_ranks_take_the_new_weights(models: dict[str, Path]) -> None:
    asked = prompts(2)
    engine = engine_on(models["a"], tp=2)
    try:
        on_a = answers(engine, asked)
        update_weights(engine, str(models["b"]))
        assert answers(engine, asked) == answers(engine_on(models["b"]), asked)
        update_weights(engine, str(models["a"]))
        assert answers(engine, asked) == on_a
    finally:
        engine.runner.close()  # type: ignore[attr-defined]


def test_the_slower_tiers_forget_and_the_disk_index_follows_the_folder(models: dict[str, Path], tmp_path: Path) -> None:
    engine = engine_on(models["a"], host=8, disk_path=tmp_path / "kv")
    runner: TorchModelRunner = engine.runner  # type: ignore[assignment]
    try:
        # More prompts than the GPU's 64 blocks hold: the first ones' blocks go to the host and disk tiers.
        answers(engine, [[random.Random(k).randrange(1000) for _ in range(200)] for k in range(8)])
        stats = engine.stats().blocks
        assert stats.host is not None and stats.host.used > 0 and stats.disk is not None
        update_weights(engine, str(models["b"]))
        stats = engine.stats().blocks
        assert stats.host is not None and stats.host.used == 0 and stats.disk is not None and stats.disk.used == 0
        assert runner.disk is not None and runner.disk.fingerprint["model"] == model_files_digest(models["b"])
    finally:
        engine.close()
