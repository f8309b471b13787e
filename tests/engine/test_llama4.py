"""Llama 4 (llama4_text, and a llama4 multimodal folder's language model served text-only): checkpoints transformers
saved generate token for token what transformers generates — prefill chunks that cross the 8-token attention
chunks' boundaries, a batch, a prefix-cache hit, over HTTP with the openai SDK — and what the engine would serve
wrongly is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.families import UnsupportedConfig
from engine.sampling_params import SamplingParams
from engine.tiny_model import write_tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import (
    random_prompt,
    runner_batched_greedy,
    runner_greedy,
    transformers_greedy,
)
from tests.engine.llama4_checkpoints import CHUNK, LLAMA4_TEXT, save_llama4
from tests.engine.serving import engine_server, sdk

# Real Hub configs (Llama-4-Scout-17B-16E's text_config, the fields that matter; Maverick's differences).
SCOUT = {
    "model_type": "llama4_text", "vocab_size": 202048, "hidden_size": 5120, "intermediate_size": 8192,
    "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
    "head_dim": 128, "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
    "attention_chunk_size": 8192, "use_qk_norm": True, "attn_temperature_tuning": True, "floor_scale": 8192,
    "attn_scale": 0.1, "max_position_embeddings": 10485760, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 16.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192}, "tie_word_embeddings": False, "hidden_act": "silu",
    "eos_token_id": [200001, 200007, 200008], "torch_dtype": "bfloat16",
}  # fmt: skip
MAVERICK = {**SCOUT, "num_local_experts": 128, "interleave_moe_layer_step": 2, "use_qk_norm": False,
            "max_position_embeddings": 1048576, "rope_scaling": None}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_llama4(tmp_path_factory.mktemp("llama4"))


@pytest.fixture(scope="module")
def expected(checkpoint: Path) -> list[int]:
    return transformers_greedy(checkpoint, random_prompt(40), 12)


def _runner(model_dir: Path) -> TorchModelRunner:
    return TorchModelRunner(model_dir, num_blocks=40, block_size=8, device="cpu")


def test_config_reads_irope_and_the_moe_layout(checkpoint: Path) -> None:
    config = ModelConfig.from_dir(checkpoint)
    assert config.nope_layers == (3,) and config.sliding_layers == (0, 1, 2) and config.attention_chunk == CHUNK
    assert config.sparse_layers == (1, 3) and config.intermediate_size == 96 and config.moe_intermediate_size == 32
    assert config.llama4 is not None and config.llama4.qk_l2_norm and config.llama4.temperature == (4.0, 0.5)
    # As Llama4TextConfig: a null chunk size chunks no layer; a null head_dim is hidden / heads, a missing one 128.
    unchunked = ModelConfig.from_dict({**LLAMA4_TEXT, "model_type": "llama4_text", "attention_chunk_size": None,
                                       "head_dim": None})  # fmt: skip
    assert unchunked.sliding_layers == () and unchunked.attention_chunk is None and unchunked.head_dim == 8
    assert ModelConfig.from_dict({k: v for k, v in SCOUT.items() if k != "head_dim"}).head_dim == 128


@pytest.mark.parametrize(("raw", "billions", "sparse"), [(SCOUT, 108, 48), (MAVERICK, 401, 24)], ids=["scout", "maverick"])
def test_hub_configs_count_transformers_parameters(raw: dict, billions: int, sparse: int) -> None:
    """Scout's and Maverick's language models: transformers' parameter count; every layer or every second sparse,
    every fourth without RoPE and global, the rest chunked over 8,192 tokens; a multimodal folder reads the same."""
    import transformers

    config = ModelConfig.from_dict(raw)
    with torch.device("meta"):
        reference = transformers.Llama4ForCausalLM(transformers.Llama4TextConfig(**raw))
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    assert round(config.num_params() / 1e9) == billions and len(config.sparse_layers) == sparse
    assert config.nope_layers == tuple(range(3, 48, 4)) and len(config.sliding_layers) == 36
    assert config.attention_chunk == config.sliding_window == 8192
    assert ModelConfig.from_dict({"model_type": "llama4", "text_config": raw}).num_params() == config.num_params()


@pytest.mark.parametrize("chunk", [5, 16, 64])
def test_greedy_tokens_equal_transformers(checkpoint: Path, expected: list[int], chunk: int) -> None:
    """Prefill 5 (crossing each 8-token attention chunk mid-step), 16 or all 40 tokens a step, then decode 12 (the
    decodes cross the boundaries at 40 and 48)."""
    assert runner_greedy(_runner(checkpoint), random_prompt(40), 12, chunk=chunk) == expected


def test_a_batch_answers_as_each_alone(checkpoint: Path) -> None:
    prompts = [random_prompt(n, seed=s) for n, s in ((40, 3), (13, 5), (27, 9))]
    alone = [transformers_greedy(checkpoint, prompt, 8) for prompt in prompts]
    runner = TorchModelRunner(checkpoint, num_blocks=80, block_size=8, device="cpu")  # 4 KV groups
    assert runner_batched_greedy(runner, prompts, 8, chunk=8, blocks_each=24) == alone


def test_a_repeated_prompt_reuses_its_blocks(checkpoint: Path) -> None:
    """The second request's first 32 tokens come from the prefix cache (chunked and global groups alike)."""
    engine = LLMEngine(EngineConfig(num_blocks=40, block_size=8, max_model_len=256), _runner(checkpoint))
    prompt = random_prompt(44, seed=7)

    def answer(request_id: str) -> tuple[list[int], int]:
        seq = engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        while engine.has_unfinished():
            engine.step()
        return seq.output_token_ids, seq.num_cached_tokens

    first, _ = answer("first")
    again, cached = answer("again")
    assert cached >= 32 and again == first == transformers_greedy(checkpoint, prompt, 6)


def test_a_multimodal_folder_serves_its_language_model(tmp_path: Path) -> None:
    """Llama4ForConditionalGeneration's `language_model.` tensors, its vision tower skipped; text as transformers'."""
    import transformers as hf

    folder = save_llama4(tmp_path / "mm", multimodal=True)
    prompt = random_prompt(30, seed=11)
    reference = hf.Llama4ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    out = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
    assert ModelConfig.from_dir(folder).model_type == "llama4"
    assert runner_greedy(_runner(folder), prompt, 8, chunk=16) == out[0, len(prompt) :].tolist()


def test_served_over_http_as_transformers(tmp_path: Path) -> None:
    """`pitstop engine serve` on a folder with the tiny tokenizer: a completion of a prompt longer than several
    attention chunks is transformers' greedy text, again from the prefix cache."""
    from transformers import AutoTokenizer

    folder = save_llama4(tmp_path / "served", vocab_size=512)
    ids = write_tokenizer(folder, 512, 256)
    for name in ("config.json", "generation_config.json"):  # the tokenizer's ids
        path = folder / name
        path.write_text(json.dumps(json.loads(path.read_text()) | {f"{k}_token_id": v for k, v in ids.items()}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("def f(x):\n    return x * 2\n\nclass Point:\n    def __init__(self, x, y):\n" * 2)["input_ids"]
    expected = tokenizer.decode(transformers_greedy(folder, prompt, 6))
    with engine_server(folder, model_name="llama4") as url:
        client = sdk(url)
        first = client.completions.create(model="llama4", prompt=prompt, max_tokens=6, temperature=0)
        again = client.completions.create(model="llama4", prompt=prompt, max_tokens=6, temperature=0)
    assert len(prompt) > 2 * CHUNK and first.choices[0].text == again.choices[0].text == expected
    details = again.usage.prompt_tokens_details if again.usage else None
    assert details is not None and details.cached_tokens == len(prompt) // 16 * 16 > 0


@pytest.mark.parametrize(("change", "message"), [({"hidden_act": "gelu"}, "silu"), ({"attention_bias": True}, "bias"),
                                                 ({"layer_types": ["sliding_attention"] * 4}, "layer_types")])
def test_what_would_be_served_wrongly_is_refused(change: dict, message: str) -> None:
    raw = {**LLAMA4_TEXT, "model_type": "llama4_text", **change}
    with pytest.raises(UnsupportedConfig, match=message):
        ModelConfig.from_dict(raw)


def test_the_cli_writes_a_tiny_llama4_the_engine_runs_as_transformers(tmp_path: Path) -> None:
    """`pitstop engine make-tiny-model --family llama4`: transformers' own classes over the tiny tokenizer; 4 layers,
    the last without RoPE, top-2 of 4 experts in layers 1 and 3."""
    from gateway.cli import main

    out = tmp_path / "tiny"
    assert main(["engine", "make-tiny-model", str(out), "--family", "llama4", "--layers", "4", "--hidden", "32",
                 "--experts", "4", "--seed", "1"]) == 0
    config = ModelConfig.from_dir(out)
    assert config.model_type == "llama4_text" and config.nope_layers == (3,) and config.sparse_layers == (1, 3)
    prompt = random_prompt(30)
    expected = transformers_greedy(out, prompt, 8)
    assert len(set(expected)) > 2
    assert runner_greedy(TorchModelRunner(out, num_blocks=64, block_size=4, device="cpu"), prompt, 8, chunk=6) == expected


def test_a_multimodal_folder_refuses_images_over_http(tmp_path: Path) -> None:
    """Its language model serves text; an image (its vision tower is not served) is a clear 400, not a 500."""
    import openai

    folder = save_llama4(tmp_path / "mm", multimodal=True, vocab_size=512)
    write_tokenizer(folder, 512, 256)
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}
    with engine_server(folder, model_name="llama4") as url:
        client = sdk(url)
        text = client.chat.completions.create(model="llama4", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, extra_body={"ignore_eos": True})  # fmt: skip
        with pytest.raises(openai.BadRequestError, match="does not take image inputs"):
            client.chat.completions.create(model="llama4", max_tokens=4, messages=[
                {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}])
    assert text.usage is not None and text.usage.completion_tokens == 4
