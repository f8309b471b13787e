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
from tests.engine.llama4_checkpoints import CHUNK, TEXT, save_llama4
from tests.engine.serving import engine_server, sdk


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
    raw = {**TEXT, "model_type": "llama4_text", **change}
    with pytest.raises(UnsupportedConfig, match=message):
        ModelConfig.from_dict(raw)
