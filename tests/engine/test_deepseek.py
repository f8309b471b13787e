"""DeepSeek-V2/V3 (multi-head latent attention, DeepSeekMoE): checkpoints transformers saved generate token for
token what transformers generates over a paged cache of 4-token blocks that holds one latent a token a layer,
through either attention form, in a batch with chunked prefill and a prefix-cache hit, after preemption, and over
HTTP; what the latent cache does not do is refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.lora import LoRAError
from engine.roofline import ModelShape
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.deepseek_checkpoints import KINDS, MLA, hf_deepseek, save_deepseek, save_serving_deepseek
from tests.engine.hf_checkpoints import random_prompt, runner_greedy, transformers_greedy
from tests.engine.serving import engine_server, sdk

LATENT = MLA["kv_lora_rank"] + MLA["qk_rope_head_dim"]  # 24 values a token a layer
# deepseek-ai/DeepSeek-V3's config.json (the fields that matter).
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
    "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
    "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "norm_topk_prob": True, "scoring_func": "sigmoid",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deepseek")
    return {kind: save_deepseek(kind, root / kind) for kind in KINDS}


def _set_decode_path(runner: TorchModelRunner, path: str) -> None:
    for layer in runner.model.model.layers:
        layer.self_attn.decode_path = path


@pytest.mark.parametrize(("kind", "decode_path"), [("v2_lite", "absorbed"), ("v2_grouped", "absorbed"),
                                                   ("v3", "absorbed"), ("v3", "decompressed")])  # fmt: skip
def test_checkpoints_generate_as_transformers(checkpoints: dict[str, Path], kind: str, decode_path: str) -> None:
    """A 30-token prompt in 16-token chunks (the second chunk reads the first's latents), then 12 decodes, over a
    reversed table of 4-token blocks; the cache holds one latent a token a layer."""
    prompt = random_prompt(30)
    expected = transformers_greedy(checkpoints[kind], prompt, 12)
    assert len(set(expected)) > 5
    runner = TorchModelRunner(checkpoints[kind], num_blocks=32, block_size=4, device="cpu")
    _set_decode_path(runner, decode_path)
    assert runner.kv_cache.shape == (MLA["num_hidden_layers"], 1, 32, 4, 1, LATENT)
    assert runner_greedy(runner, prompt, 12) == expected
    assert runner.config.num_params() == sum(p.numel() for p in hf_deepseek(kind).parameters())


def test_the_two_attention_forms_agree(checkpoints: dict[str, Path]) -> None:
    """Absorbed (W_UK in the queries, W_UV after) and decompressed attention give the same outputs: a decode batch
    of rows with different context lengths, masked to their own, and prefill rows with and without cached keys."""
    runner = TorchModelRunner(checkpoints["v3"], num_blocks=32, block_size=4, device="cpu")
    attention = runner.model.model.layers[1].self_attn
    torch.manual_seed(1)
    q_nope, q_rot = torch.randn(3, 4, MLA["qk_nope_head_dim"]), torch.randn(3, 4, MLA["qk_rope_head_dim"])
    latents = torch.randn(3, 1, 12, LATENT)
    mask = (torch.arange(12)[None, :] < torch.tensor([12, 5, 9])[:, None])[:, None, None, :]
    with torch.inference_mode():
        absorbed = attention.absorbed_decode(q_nope, q_rot, latents, mask)
        decompressed = attention.decompressed_decode(q_nope, q_rot, latents, mask)
    assert absorbed.shape == (3, 4, MLA["v_head_dim"])
    torch.testing.assert_close(absorbed, decompressed, rtol=1e-4, atol=1e-5)
    # A prefill row of 5 queries after 7 cached tokens (a mask), and a fresh one of 12 (causal).
    q_nope, q_rot = torch.randn(12, 4, MLA["qk_nope_head_dim"]), torch.randn(12, 4, MLA["qk_rope_head_dim"])
    cached = torch.arange(12)[None, :] <= torch.arange(7, 12)[:, None]
    with torch.inference_mode():
        for rows, mask in ((slice(7, 12), cached), (slice(0, 12), None)):
            absorbed = attention.absorbed_prefill(q_nope[rows], q_rot[rows], latents[0, 0], mask)
            decompressed = attention.decompressed_prefill(q_nope[rows], q_rot[rows], latents[0, 0], mask)
            torch.testing.assert_close(absorbed, decompressed, rtol=1e-4, atol=1e-5)
    assert attention.absorb_below == 13  # 16 x (8 + 12) // (2 x 16 + 8 - 16 - 12) // 2: draft rows absorb


def _engine(model_dir: Path, blocks: int, chunk: int = 32, **config: object) -> LLMEngine:
    return LLMEngine(EngineConfig(block_size=4, num_blocks=blocks, max_model_len=256, max_num_seqs=4,
                                  max_num_batched_tokens=chunk, **config),  # type: ignore[arg-type]
                     TorchModelRunner(model_dir, blocks, 4, device="cpu"))


def _run(engine: LLMEngine, prompts: dict[str, list[int]], new_tokens: int) -> dict[str, Sequence]:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    seqs = {name: engine.add_request(name, prompt, params) for name, prompt in prompts.items()}
    while engine.has_unfinished():
        engine.step()
    return seqs


def test_a_chunked_batch_and_a_prefix_cache_hit_answer_as_transformers(checkpoints: dict[str, Path]) -> None:
    """Four requests of different lengths share 32-token steps (prefill chunks beside decodes); a fifth shares
    the third's first 36 tokens and reads their latents from the cache."""
    model = checkpoints["v3"]
    prompts = {f"s{i}": random_prompt(length, seed) for i, (seed, length) in enumerate(((1, 5), (2, 23), (3, 40), (4, 11)))}
    engine = _engine(model, 64)
    got = _run(engine, prompts, 10)
    for name, prompt in prompts.items():
        assert got[name].output_token_ids == transformers_greedy(model, prompt, 10), name
    shared = prompts["s2"][:36] + random_prompt(9, seed=9)
    again = _run(engine, {"hit": shared}, 10)["hit"]
    assert again.num_cached_tokens == 36
    assert again.output_token_ids == transformers_greedy(model, shared, 10)


def test_requests_preempted_from_a_small_cache_answer_as_transformers(checkpoints: dict[str, Path]) -> None:
    model = checkpoints["v2_grouped"]
    prompts = {f"p{i}": random_prompt(20, seed=20 + i) for i in range(3)}
    engine = _engine(model, 24)
    got = _run(engine, prompts, 16)
    assert engine.scheduler.num_preemptions > 0
    for name, prompt in prompts.items():
        assert got[name].output_token_ids == transformers_greedy(model, prompt, 16), name


def test_ngram_drafts_are_checked_over_the_latents(checkpoints: dict[str, Path]) -> None:
    """A decode row with drafts attends as a short prefill over the cached latents; rejected drafts' latents are
    overwritten."""
    prompt = (random_prompt(6, seed=31) * 5)[:28]
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=2)
    engine = _engine(checkpoints["v2_lite"], 64, speculative=spec)
    seq = _run(engine, {"spec": prompt}, 16)["spec"]
    assert engine.spec.draft_tokens > 0
    assert seq.output_token_ids == transformers_greedy(checkpoints["v2_lite"], prompt, 16)


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_a_prefix_evicted_to_a_tier_comes_back_as_latents(checkpoints: dict[str, Path], tmp_path: Path,
                                                          tier: str) -> None:
    """A 16-block cache with a host tier of 64 blocks (or of 2, a disk tier of 64 behind it): the first prompt's
    latent blocks leave the cache while two others run, and a request sharing its 36 tokens loads them back and
    answers as transformers."""
    model, disk = checkpoints["v3"], 64 if tier == "disk" else 0
    host = 2 if disk else 64
    config = EngineConfig(block_size=4, num_blocks=16, max_model_len=256, max_num_seqs=1, max_num_batched_tokens=32,
                          num_host_blocks=host, num_disk_blocks=disk)
    runner = TorchModelRunner(model, 16, 4, device="cpu", num_host_blocks=host, num_disk_blocks=disk,
                              disk_kv_path=tmp_path if disk else None)
    engine = LLMEngine(config, runner)
    first = random_prompt(40, seed=3)
    _run(engine, {"first": first}, 4)
    _run(engine, {f"crowd{i}": random_prompt(40, seed=30 + i) for i in range(2)}, 4)
    shared = first[:36] + random_prompt(9, seed=9)
    again = _run(engine, {"hit": shared}, 10)["hit"]
    stats = engine.stats().blocks
    assert again.num_cached_tokens == 36 and (stats.disk_hit_tokens if disk else stats.host_hit_tokens) >= 32
    assert runner.host_kv.shape == (MLA["num_hidden_layers"], 1, host, 4, 1, LATENT)
    assert again.output_token_ids == transformers_greedy(model, shared, 10)
    engine.close()


def test_kv_bytes_per_token_are_the_latents(checkpoints: dict[str, Path]) -> None:
    """A block's bytes are the latent's, and a budget holds as many blocks as those bytes allow; DeepSeek-V3's
    576 values a token a layer (bf16: 70,272 bytes a token) against 40,960 a layer for its expanded K/V."""
    config = ModelConfig.from_dir(checkpoints["v3"])
    per_block = TorchModelRunner.kv_bytes_per_block(config, 4, torch.float32)
    assert per_block == MLA["num_hidden_layers"] * 4 * LATENT * 4
    assert TorchModelRunner.num_blocks_for_budget(checkpoints["v3"], 10 * per_block + 1, 4, device="cpu") == 10
    v3 = ModelConfig.from_dict(DEEPSEEK_V3)
    assert v3.kv_cache_entry == (1, 1, 576) and v3.sparse_layers == tuple(range(3, 61))
    assert TorchModelRunner.kv_bytes_per_block(v3, 1, torch.bfloat16) == 61 * 576 * 2
    assert v3.shared_expert_intermediate_size == 2048 and v3.n_group == 8 and v3.scoring_func == "sigmoid"
    # YaRN x40 with mscale_all_dim 1: 192 ** -0.5 x (0.1 ln 40 + 1) ** 2
    assert v3.attention_scale == pytest.approx(192**-0.5 * 1.3688879454113936**2)


def test_the_release_configs_count_their_parameters_and_the_roofline_prices_the_latent() -> None:
    """DeepSeek-V3: 671B parameters (its report's, the multi-token-prediction layer aside), 37B of them a token's;
    the roofline reads 70,272 KV bytes a token (bf16) and the same weights."""
    v3 = ModelConfig.from_dict(DEEPSEEK_V3)
    assert v3.num_params() == pytest.approx(671.0e9, rel=1e-3)
    shape = ModelShape.from_hf_config(DEEPSEEK_V3)
    assert shape.kv_bytes_per_token == 61 * 576 * 2 and shape.num_sparse_layers == 58
    assert shape.num_params == pytest.approx(v3.num_params(), rel=1e-5)  # norms aside
    assert shape.active_layer_params + 2 * shape.lm_head_params == pytest.approx(37.5e9, rel=0.01)


@pytest.mark.parametrize(("option", "message"), [({"kv_cache_dtype": "fp8"}, "kv_cache_dtype"),
                                                 ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
                                                 ({"quantization": "int8"}, "quantized")])  # fmt: skip
def test_what_the_latent_cache_does_not_do_is_refused_at_load(checkpoints: dict[str, Path], option: dict,
                                                              message: str) -> None:
    with pytest.raises(ValueError, match=f"multi-head latent attention.*{message}"):
        TorchModelRunner(checkpoints["v2_lite"], 8, 4, device="cpu", **option)


def test_a_lora_adapter_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    runner = TorchModelRunner(checkpoints["v2_lite"], 8, 4, device="cpu")
    with pytest.raises(LoRAError, match="multi-head latent attention"):
        runner.load_lora(tmp_path, max_rank=8)


def test_served_over_http_as_transformers(tmp_path: Path) -> None:
    model_dir = save_serving_deepseek("v3", tmp_path / "served")
    prompt = Tokenizer(model_dir).encode("def f(x):\n    return x * 2\n")
    expected = transformers_greedy(model_dir, prompt, 8)
    with engine_server(model_dir, block_size=4) as url:
        answer = sdk(url).completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0.0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True})
    assert answer.choices[0].token_ids == expected  # type: ignore[attr-defined]
