"""Qwen3 (per-head q/k norms, YaRN RoPE) and the mixture-of-experts Qwen3-MoE and Mixtral: checkpoints
that transformers saved generate token for token what transformers generates, real Hub configs parse
to transformers' parameter counts, and the two expert kernels agree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.model.config import ModelConfig
from engine.model.moe import SparseMoE
from engine.model.rope import attention_scaling, inverse_frequencies
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import (
    MIXTRAL_8X7B,
    QWEN3_8B,
    QWEN3_30B_A3B,
    hf_model,
    random_prompt,
    runner_batched_greedy,
    runner_greedy,
    save_hf_model,
    transformers_greedy,
)

FAMILIES = ["qwen3", "qwen3_moe", "qwen3_moe_unnormalised", "mixtral", "mistral_sliding", "qwen3_sliding"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {kind: save_hf_model(kind, root / kind) for kind in FAMILIES}


@pytest.mark.parametrize("kind", FAMILIES)
def test_checkpoints_saved_by_transformers_generate_identically(checkpoints: dict[str, Path], kind: str) -> None:
    prompt = random_prompt()  # 40 tokens: past YaRN's original 16 positions
    expected = transformers_greedy(checkpoints[kind], prompt, 16)
    assert len(set(expected)) > 5
    runner = TorchModelRunner(checkpoints[kind], num_blocks=32, block_size=8, device="cpu")
    assert runner.config.num_params() == sum(p.numel() for p in hf_model(kind).parameters())
    assert runner_greedy(runner, prompt, 16) == expected


@pytest.mark.parametrize("kind", ["qwen3_moe", "mistral_sliding"])
def test_a_batch_of_sequences_decodes_as_each_alone(checkpoints: dict[str, Path], kind: str) -> None:
    """Experts see the whole step's tokens at once, and windows start at a different block in each
    row (prefill chunks and decodes of several sequences): each sequence's greedy answer is what it
    gets alone."""
    runner = TorchModelRunner(checkpoints[kind], num_blocks=64, block_size=8, device="cpu")
    prompts = [random_prompt(length, seed) for seed, length in enumerate((5, 23, 40, 11))]
    alone = [runner_greedy(runner, prompt, 12, chunk=64) for prompt in prompts]
    assert runner_batched_greedy(runner, prompts, 12, chunk=7, blocks_each=15) == alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_and_looped_experts_agree(dtype: torch.dtype) -> None:
    config = ModelConfig.from_dict({**QWEN3_30B_A3B, "hidden_size": 64, "moe_intermediate_size": 32,
                                    "num_experts": 16, "num_experts_per_tok": 4, "num_hidden_layers": 1})  # fmt: skip
    torch.manual_seed(0)
    moe = SparseMoE(config).to(dtype)
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.2)
    for tokens in (1, 3, 64):  # with 1 or 3 tokens most experts get none
        x = torch.randn(tokens, 64, dtype=dtype)
        grouped, looped = moe(x, grouped=True), moe(x, grouped=False)
        # One token through its top 4 experts by hand.
        weights, experts = moe.route(x[:1])
        by_hand = sum(
            w * torch.nn.functional.linear(
                torch.nn.functional.silu(g) * u, moe.experts.down_proj[e])
            for w, e in zip(weights[0], experts[0].tolist(), strict=True)
            for g, u in [torch.nn.functional.linear(x[:1], moe.experts.gate_up_proj[e]).chunk(2, dim=-1)]
        )  # fmt: skip
        tolerance = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(grouped, looped, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(grouped[:1], by_hand, atol=tolerance, rtol=tolerance)
        assert experts.unique().numel() == 4 and weights.sum().item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize(("raw", "cls"), [(QWEN3_30B_A3B, "Qwen3MoeForCausalLM"), (QWEN3_8B, "Qwen3ForCausalLM"),
                                          (MIXTRAL_8X7B, "MixtralForCausalLM")])  # fmt: skip
def test_hub_configs_count_transformers_parameters(raw: dict, cls: str) -> None:
    import transformers

    config = ModelConfig.from_dict(raw)
    hf_config = transformers.AutoConfig.for_model(**{k: v for k, v in raw.items() if k != "architectures"})
    with torch.device("meta"):
        reference = getattr(transformers, cls)(hf_config)
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    if raw is QWEN3_30B_A3B:  # 30.5B total, as Qwen publishes
        assert config.num_params() == pytest.approx(30.5e9, rel=0.01) and config.sparse_layers == tuple(range(48))
        assert (config.num_experts, config.num_experts_per_tok, config.norm_topk_prob) == (128, 8, True)
    if raw is MIXTRAL_8X7B:  # 46.7B total
        assert config.num_params() == pytest.approx(46.7e9, rel=0.01) and config.moe_intermediate_size == 14336


def test_sparse_layers_and_rejections() -> None:
    stepped = ModelConfig.from_dict({**QWEN3_30B_A3B, "num_hidden_layers": 6, "decoder_sparse_step": 2,
                                     "mlp_only_layers": [3]})  # fmt: skip
    assert stepped.sparse_layers == (1, 5)
    assert ModelConfig.from_dict({**QWEN3_30B_A3B, "num_experts": 0}).sparse_layers == ()
    assert not ModelConfig.from_dict({**QWEN3_30B_A3B, "norm_topk_prob": False}).norm_topk_prob
    with pytest.raises(ValueError, match="layer_types"):
        ModelConfig.from_dict({**QWEN3_8B, "use_sliding_window": True, "sliding_window": 4096,
                               "layer_types": ["sliding_attention"] * 35})  # fmt: skip


def test_sliding_windows_are_read_as_transformers_reads_them() -> None:
    """Mistral and Mixtral slide in every layer when `sliding_window` is set; Qwen only with
    `use_sliding_window`, from `max_window_layers` on unless `layer_types` says otherwise."""
    from transformers import Qwen3Config

    assert ModelConfig.from_dict(MIXTRAL_8X7B).sliding_layers == ()
    mixtral = ModelConfig.from_dict({**MIXTRAL_8X7B, "sliding_window": 4096})
    assert (mixtral.sliding_window, mixtral.sliding_layers) == (4096, tuple(range(32)))
    assert ModelConfig.from_dict({**QWEN3_8B, "sliding_window": 4096}).sliding_layers == ()  # flag off
    for extra in ({"max_window_layers": 30}, {"layer_types": ["sliding_attention", "full_attention"] * 18}):
        raw = {**QWEN3_8B, "use_sliding_window": True, "sliding_window": 4096, **extra}
        hf = Qwen3Config(**{k: v for k, v in raw.items() if k != "architectures"})
        config = ModelConfig.from_dict(raw)
        assert config.sliding_layers == tuple(i for i, t in enumerate(hf.layer_types) if t == "sliding_attention")
        assert config.sliding_layers and config.sliding_window == hf.sliding_window == 4096
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelConfig.from_dict({**QWEN3_30B_A3B, "num_experts_per_tok": 129})


@pytest.mark.parametrize("scaling", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
     "mscale": 1.0, "mscale_all_dim": 0.707},  # DeepSeek's kind
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "attention_factor": 0.9,
     "truncate": False},
])  # fmt: skip
def test_yarn_matches_transformers(scaling: dict) -> None:
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    raw = {**QWEN3_8B, "rope_scaling": scaling}
    hf = Qwen3RotaryEmbedding(Qwen3Config(**{k: v for k, v in raw.items() if k != "architectures"}))
    config = ModelConfig.from_dict(raw)
    assert torch.equal(inverse_frequencies(config), hf.inv_freq)
    assert attention_scaling(config) == pytest.approx(hf.attention_scaling, rel=1e-12)
    if "attention_factor" not in scaling and "mscale" not in scaling:
        assert attention_scaling(config) == pytest.approx(0.1 * math.log(scaling["factor"]) + 1)


def test_stacked_expert_checkpoints_load_and_gaps_are_named(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """transformers 5 may save experts stacked, as Pitstop holds them; a checkpoint missing one
    expert's projection is refused by name."""
    source = checkpoints["qwen3_moe"]
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(source.glob("*.safetensors")):
        tensors.update(load_file(path))
    prefix = "model.layers.0.mlp.experts"
    gate = [tensors.pop(f"{prefix}.{e}.gate_proj.weight") for e in range(8)]
    up = [tensors.pop(f"{prefix}.{e}.up_proj.weight") for e in range(8)]
    down = [tensors.pop(f"{prefix}.{e}.down_proj.weight") for e in range(8)]
    stacked = {f"{prefix}.gate_up_proj": torch.stack([torch.cat(pair) for pair in zip(gate, up, strict=True)]),
               f"{prefix}.down_proj": torch.stack(down)}  # fmt: skip
    out = tmp_path / "stacked"
    out.mkdir()
    (out / "config.json").write_text((source / "config.json").read_text())
    save_file({**tensors, **stacked}, str(out / "model.safetensors"))
    prompt = random_prompt(20)
    runner = TorchModelRunner(out, num_blocks=32, block_size=8, device="cpu")
    assert runner_greedy(runner, prompt, 8) == transformers_greedy(source, prompt, 8)

    del tensors["model.layers.0.self_attn.q_norm.weight"]
    save_file({**tensors, **stacked, f"{prefix}.down_proj": torch.stack(down)[:, :, :16].contiguous()}, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="down_proj: expected shape"):
        TorchModelRunner(out, num_blocks=32, block_size=8, device="cpu")
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        TorchModelRunner(out, num_blocks=32, block_size=8, device="cpu")


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_tiny_families_are_real_models_that_serve(tmp_path: Path, family: str) -> None:
    """`pitstop engine make-tiny-model --family` writes a folder transformers loads as that family and
    agrees with token for token; served, it answers the openai SDK, a forced tool call included."""
    import json

    from transformers import AutoModelForCausalLM

    from engine.tiny_model import make_tiny_model
    from tests.engine.serving import engine_server, sdk

    model_dir = make_tiny_model(tmp_path / family, layers=2, hidden=64, family=family, experts=6, experts_per_token=2)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected_class = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[family]
    assert type(reference).__name__ == expected_class
    config = ModelConfig.from_dir(model_dir)
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    assert len(config.sparse_layers) == (2 if family == "qwen3_moe" else 0)
    prompt = random_prompt(30)
    runner = TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu")
    expected = transformers_greedy(model_dir, prompt, 12)
    assert len(set(expected)) > 3 and runner_greedy(runner, prompt, 12) == expected

    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}
    with engine_server(model_dir, model_name=family) as url:
        client = sdk(url)
        chat = client.chat.completions.create(model=family, messages=[{"role": "user", "content": "Weather?"}],
                                              tools=[tool], tool_choice="required", parallel_tool_calls=False,
                                              max_tokens=64, temperature=0)
        (call,) = chat.choices[0].message.tool_calls or []
        assert call.function.name == "lookup" and set(json.loads(call.function.arguments)) == {"city"}
        text = client.completions.create(model=family, prompt="def f(x):", max_tokens=8, temperature=0)
        assert text.usage.completion_tokens == 8


@pytest.mark.parametrize("window", [5, 8, 12, 100])
def test_paged_sliding_window_attention_matches_dense_attention(window: int) -> None:
    """A step mixing decodes and prefill chunks (some past the window, some within it) over shuffled
    blocks: each query attends to exactly its last `window` keys, as a dense masked softmax does."""
    from engine.model.attention import (
        AttentionMetadata,
        AttentionPlan,
        GatherWorkspace,
        paged_attention,
        write_kv,
    )

    torch.manual_seed(0)
    block_size, heads, kv_heads, dim = 4, 4, 2, 8
    rows = [(1, 30), (1, 3), (7, 29), (9, 9), (1, 13), (16, 40)]  # (new tokens, context after the step)
    blocks = torch.randperm(64).tolist()
    cache = torch.zeros(2, 64, block_size, kv_heads, dim)
    tables, slots, q_rows, expected, starts, at = [], [], [], [], [], 0
    for new, context in rows:
        table = [blocks.pop() for _ in range(-(-context // block_size))]
        keys, values = torch.randn(context, kv_heads, dim), torch.randn(context, kv_heads, dim)
        all_slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(context)])
        write_kv(cache, keys[: context - new], values[: context - new], all_slots[: context - new])  # earlier steps
        q = torch.randn(new, heads, dim)
        positions = torch.arange(context - new, context)[:, None]
        visible = (torch.arange(context)[None, :] <= positions) & (torch.arange(context)[None, :] > positions - window)
        scores = torch.einsum("qhd,khd->hqk", q, keys.repeat_interleave(heads // kv_heads, 1)) / dim**0.5
        weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        expected.append(torch.einsum("hqk,khd->qhd", weights, values.repeat_interleave(heads // kv_heads, 1)))
        tables.append(table)
        slots.append(all_slots[context - new :])
        q_rows.append((q, keys[context - new :], values[context - new :]))
        starts.append(at)
        at += new
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots), block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        query_starts=starts, query_lens=[n for n, _ in rows], context_lens=[c for _, c in rows], block_size=block_size,
    )  # fmt: skip
    write_kv(cache, torch.cat([k for _, k, _ in q_rows]), torch.cat([v for _, _, v in q_rows]), meta.slot_mapping)
    plan = AttentionPlan.build(meta, sliding_window=window)
    assert plan.sliding is not None
    out = paged_attention(torch.cat([q for q, _, _ in q_rows]), cache, plan.sliding)
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)
    # Gathering into a kept workspace (the CPU runner's) gives the same answer, layer after layer.
    workspace = GatherWorkspace()
    kept = AttentionPlan.build(meta, sliding_window=window, workspace=workspace)
    assert kept.sliding is not None
    for _ in range(2):
        torch.testing.assert_close(paged_attention(torch.cat([q for q, _, _ in q_rows]), cache, kept.sliding), out)
    buffer = workspace._buffers["k"]
    paged_attention(torch.cat([q for q, _, _ in q_rows]), cache, kept)
    assert workspace._buffers["k"] is buffer or workspace._buffers["k"].numel() > buffer.numel()
    if window < 40:  # the window changes the answer: full attention differs
        assert not torch.allclose(paged_attention(torch.cat([q for q, _, _ in q_rows]), cache, plan), out, atol=1e-3)
