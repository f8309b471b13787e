"""EAGLE-3 speculative decoding (engine/eagle3.py, engine/eagle3_head.py) on the torch runner and a 4-layer tiny
Llama: greedy answers are plain decoding's and transformers' generate's token for token, across a batch,
chunked prefills, preemption and prefix-cache hits, and sampled ones keep the rejection sampler's guarantee;
the head's drafts are what a plain-torch reference of the published architecture (fc over three layers'
inputs, the 2-hidden-wide attention input, the draft vocabulary mapped back through d2t) computes from the
checkpoint; a trained head (engine/tiny_eagle3.py) is accepted, in EAGLE-3's and speculators' layouts;
heads that do not fit are refused; served by `pitstop engine serve` to the openai SDK."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.build import build_engine
from engine.config import EngineConfig, SpeculativeConfig
from engine.eagle3 import Eagle3Proposer
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_eagle import random_prompts
from engine.tiny_eagle3 import make_tiny_eagle3_head, train_eagle3_head
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_serve_process, sdk

PROMPTS = random_prompts(8, 12, 1024)
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=24, ignore_eos=True)
PLAIN: dict[tuple, dict[str, list[int]]] = {}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four layers: room for EAGLE-3's default layers (2, 2, 1) and a trained head's (1, 2, 3)."""
    return make_tiny_model(tmp_path_factory.mktemp("eagle3_target"), layers=4)


@pytest.fixture(scope="module")
def heads(target: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eagle3")
    return {"trained": train_eagle3_head(target, root / "trained", PROMPTS, [1, 2, 3], new_tokens=24, steps=40),
            "random": make_tiny_eagle3_head(target, root / "random", seed=1)}


def eagle3(head: Path, k: int = 3, acceptance_method: str = "coupled") -> SpeculativeConfig:
    return SpeculativeConfig(method="eagle3", model=str(head), num_speculative_tokens=k,
                             acceptance_method=acceptance_method)


def engine_for(model_dir: Path, spec: SpeculativeConfig | None, num_blocks: int = 256, chunk: int = 512) -> LLMEngine:
    config = EngineConfig(block_size=4, num_blocks=num_blocks, max_model_len=512, max_num_batched_tokens=256,
                          long_prefill_token_threshold=chunk, speculative=spec)
    return LLMEngine(config, TorchModelRunner(model_dir, num_blocks, 4))


def answers(engine: LLMEngine, params: SamplingParams, prompts: list[list[int]], first: int = 0) -> dict[str, list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{first + i}", prompt, params)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens


def plain(model_dir: Path, params: SamplingParams, prompts: list[list[int]]) -> dict[str, list[int]]:
    key = (params, tuple(map(tuple, prompts)))
    if key not in PLAIN:
        PLAIN[key] = answers(engine_for(model_dir, None), params, prompts)
    return PLAIN[key]


def acceptance(engine: LLMEngine) -> float:
    spec = engine.stats().spec
    return spec.accepted_tokens / spec.draft_tokens


def test_greedy_batch_is_plain_decoding_and_transformers_generate(target: Path, heads: dict[str, Path]) -> None:
    from transformers import LlamaForCausalLM

    engine = engine_for(target, eagle3(heads["trained"]))
    fast = answers(engine, GREEDY, PROMPTS[:5])
    assert fast == plain(target, GREEDY, PROMPTS[:5])
    model = LlamaForCausalLM.from_pretrained(target).eval()
    with torch.no_grad():
        generated = model.generate(torch.tensor(PROMPTS[:5]), attention_mask=torch.ones(5, 12, dtype=torch.long),
                                   do_sample=False, max_new_tokens=24, min_new_tokens=24)
    assert [fast[f"r{i}"] for i in range(5)] == generated[:, 12:].tolist()
    assert acceptance(engine) > 0.3 and engine.num_steps < GREEDY.max_tokens


def test_sampling_with_the_rejection_sampler(target: Path, heads: dict[str, Path]) -> None:
    """Greedy requests keep their answers under the rejection sampler; sampled ones get drafts accepted, the
    head's q being a distribution over the target's ids (none outside the draft vocabulary: -inf there)."""
    spec = eagle3(heads["trained"], acceptance_method="rejection_sampler")
    engine = engine_for(target, spec)
    assert answers(engine, GREEDY, PROMPTS[:2]) == plain(target, GREEDY, PROMPTS[:2]) and acceptance(engine) > 0.3
    engine = engine_for(target, spec)
    sampled = answers(engine, SEEDED, PROMPTS[:2])
    assert all(len(tokens) == 24 for tokens in sampled.values()) and engine.stats().spec.accepted_tokens > 0
    coupled = engine_for(target, eagle3(heads["trained"]))
    assert answers(coupled, SEEDED, PROMPTS[:2]) == plain(target, SEEDED, PROMPTS[:2])  # coupled: token for token


def test_chunked_prefill_and_preemption(target: Path, heads: dict[str, Path]) -> None:
    rng = random.Random(5)
    prompts = [PROMPTS[0], [rng.randrange(1000) for _ in range(70)], [rng.randrange(1000) for _ in range(33)], [17]]
    engine = engine_for(target, eagle3(heads["trained"]), chunk=16)
    assert answers(engine, GREEDY, prompts) == plain(target, GREEDY, prompts)
    assert engine.stats().spec.accepted_tokens > 0
    engine = engine_for(target, eagle3(heads["trained"], k=4), num_blocks=28)
    assert answers(engine, GREEDY, PROMPTS[:5]) == plain(target, GREEDY, PROMPTS[:5])
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.blocks.used == 0 and stats.spec.accepted_tokens > 0
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, Eagle3Proposer)
    assert not proposer.shadows and not proposer.features.chunks and proposer.block_manager.stats().used == 0


def test_prefix_cache_hits(target: Path, heads: dict[str, Path]) -> None:
    """The same prompt three times: a hit in both caches drafts as the first did; with the head's cache
    emptied, the target's hit leaves the head zero features for the prefix and the answer is unchanged."""
    engine = engine_for(target, eagle3(heads["trained"]))
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, Eagle3Proposer)
    rates = []
    for i, reset in enumerate((False, False, True)):
        if reset:
            proposer.block_manager.reset_prefix_cache()
        before = engine.stats().spec
        assert answers(engine, GREEDY, [PROMPTS[0]], first=i)[f"r{i}"] == plain(target, GREEDY, PROMPTS[:1])["r0"]
        after = engine.stats().spec
        rates.append((after.accepted_tokens - before.accepted_tokens) / (after.draft_tokens - before.draft_tokens))
    assert engine.block_manager.stats().prefix_hit_tokens >= 16 and proposer.block_manager.stats().prefix_hit_tokens >= 8
    assert rates[1] == rates[0] > 0.3


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight


def rotate(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Llama's RoPE (half-split) of [T, heads, head_dim] at positions 0..T-1."""
    half = x.shape[-1] // 2
    angles = torch.arange(x.shape[0])[:, None] * theta ** (-torch.arange(half) / half)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    return torch.cat([x[..., :half] * cos - x[..., half:] * sin, x[..., half:] * cos + x[..., :half] * sin], dim=-1)


def reference_layer(w: dict[str, torch.Tensor], embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """EAGLE-3's midlayer over whole rows [T, hidden], as published: attention over [norm(embed) ;
    hidden_norm(feature)], the feature the residual; the output before the final norm."""
    x = torch.cat([rms(embeds, w["midlayer.input_layernorm.weight"]), rms(features, w["midlayer.hidden_norm.weight"])], -1)
    q, k, v = (x @ w[f"midlayer.self_attn.{p}_proj.weight"].T for p in "qkv")
    q, k, v = q.view(len(x), 4, 16), k.view(len(x), 2, 16).repeat_interleave(2, 1), v.view(len(x), 2, 16).repeat_interleave(2, 1)
    attended = torch.nn.functional.scaled_dot_product_attention(rotate(q).transpose(0, 1), rotate(k).transpose(0, 1),
                                                                v.transpose(0, 1), is_causal=True)
    hidden = features + attended.transpose(0, 1).flatten(1) @ w["midlayer.self_attn.o_proj.weight"].T
    mlp_in = rms(hidden, w["midlayer.post_attention_layernorm.weight"])
    gate, up = mlp_in @ w["midlayer.mlp.gate_proj.weight"].T, mlp_in @ w["midlayer.mlp.up_proj.weight"].T
    return hidden + (torch.nn.functional.silu(gate) * up) @ w["midlayer.mlp.down_proj.weight"].T


def reference_drafts(model: torch.nn.Module, head: Path, layer_ids: tuple[int, ...], tokens: list[int],
                     k: int) -> list[int]:
    """k greedy drafts after `tokens` from scratch: row j reads token j + 1 and fc(the inputs of the target's
    layers `layer_ids` at j) (transformers' hidden_states[i]); a draft's row the head's output before it."""
    w = load_file(str(head / "model.safetensors"))
    with torch.no_grad():
        states = model.model(torch.tensor([tokens]), output_hidden_states=True).hidden_states
        features = torch.cat([states[i][0, :-1] for i in layer_ids], -1) @ w["fc.weight"].T
        ids, drafts = list(tokens[1:]), []
        for _ in range(k):
            out = reference_layer(w, model.model.embed_tokens(torch.tensor(ids)), features)[-1]
            best = int((rms(out, w["norm.weight"]) @ w["lm_head.weight"].T).argmax())
            drafts.append(best + int(w["d2t"][best]))
            ids.append(drafts[-1])
            features = torch.cat([features, out[None]])
    return drafts


@pytest.mark.parametrize(("name", "layer_ids"), [("trained", (1, 2, 3)), ("random", (2, 2, 1))])
def test_the_heads_drafts_are_the_published_architectures(target: Path, heads: dict[str, Path], name: str,
                                                          layer_ids: tuple[int, ...]) -> None:
    """Every proposal of a request's steps (drafts held and rejected) is the reference's; the random head
    names no layers (vLLM's defaults: 2, num_layers // 2, num_layers - 3) and drafts over every fourth id
    (d2t offsets 0, 3, 6, ...)."""
    from transformers import LlamaForCausalLM

    engine = engine_for(target, eagle3(heads[name]), num_blocks=64)
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, Eagle3Proposer)
    seen: list[tuple[list[int], list[int]]] = []
    propose = proposer.propose

    def recorded(requests: list) -> list[list[int]]:
        drafts = propose(requests)
        seen.append((list(requests[0][0].token_ids), drafts[0]))
        return drafts

    proposer.propose = recorded  # type: ignore[method-assign]
    answers(engine, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), [PROMPTS[2]])
    model = LlamaForCausalLM.from_pretrained(target).eval()
    checked = [(tokens, drafts) for tokens, drafts in seen if len(drafts) == 3]
    assert len(checked) >= 3
    for tokens, drafts in checked:
        assert drafts == reference_drafts(model, heads[name], layer_ids, tokens, 3)


def speculators_layout(head: Path, out: Path) -> Path:
    """The head as RedHat's speculators write it: the layer's config nested, `layers.0.` for `midlayer.`."""
    out.mkdir()
    config = json.loads((head / "config.json").read_text())
    layer = {k: v for k, v in config.items() if k not in ("architectures", "draft_vocab_size", "eagle_config")}
    (out / "config.json").write_text(json.dumps({
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "transformer_layer_config": layer,
        "draft_vocab_size": config["draft_vocab_size"], "norm_before_residual": False,
        "eagle_aux_hidden_state_layer_ids": config["eagle_config"]["eagle_aux_hidden_state_layer_ids"],
        "speculators_config": {"algorithm": "eagle3", "verifier": {"architectures": ["LlamaForCausalLM"]}}}))
    weights = {k.replace("midlayer.", "layers.0."): v for k, v in load_file(str(head / "model.safetensors")).items()}
    save_file(weights, str(out / "model.safetensors"))
    return out


def test_speculators_layout_drafts_the_same(target: Path, heads: dict[str, Path], tmp_path: Path) -> None:
    ours = engine_for(target, eagle3(heads["trained"]))
    theirs = engine_for(target, eagle3(speculators_layout(heads["trained"], tmp_path / "speculators")))
    assert answers(theirs, GREEDY, PROMPTS[:2]) == answers(ours, GREEDY, PROMPTS[:2])
    assert ours.stats().spec == theirs.stats().spec and acceptance(ours) > 0.3


def test_heads_that_do_not_fit_are_refused(target: Path, heads: dict[str, Path], tmp_path: Path) -> None:
    def variant(name: str, config: dict | None = None, drop: str | None = None, change: dict | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(json.loads((heads["random"] / "config.json").read_text())
                                                       | (config or {})))
        weights = load_file(str(heads["random"] / "model.safetensors")) | (change or {})
        weights.pop(drop or "", None)
        save_file(weights, str(folder / "model.safetensors"))
        return folder

    d2t = load_file(str(heads["random"] / "model.safetensors"))["d2t"]
    cases = {variant("arch", {"architectures": ["LlamaForCausalLM"]}): "method 'eagle'",
             variant("kind", {"speculators_model_type": "eagle"}): "is not 'eagle3'",
             variant("qwen", {"model_type": "qwen3"}): "only Llama layers",
             variant("layers", {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 9]}}): "not three of",
             variant("vocab", {"vocab_size": 2048}): "vocab_size \\(2048\\) is not the target's \\(1024\\)",
             variant("width", {"target_hidden_size": 128}): "target_hidden_size \\(128\\)",
             variant("draft_vocab", {"draft_vocab_size": 4096}): "not within",
             variant("no_d2t", drop="d2t"): "no d2t to map them back",
             variant("d2t_out", change={"d2t": d2t + 2000}): "outside the target's vocabulary",
             variant("t2d", change={"t2d": torch.ones(1024, dtype=torch.bool)}): "t2d does not mark",
             variant("eagle1_fc", change={"fc.weight": torch.zeros(64, 128)}): "fc.weight is \\(64, 128\\)",
             variant("no_hidden_norm", drop="midlayer.hidden_norm.weight"): "no layers.0.hidden_norm.weight",
             tmp_path: "not a model folder"}
    for folder, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            build_engine(target, num_blocks=64, speculative=eagle3(folder))


def test_served_by_the_cli_to_the_openai_sdk(target: Path, heads: dict[str, Path]) -> None:
    spec = json.dumps({"method": "eagle3", "model": str(heads["trained"]), "num_speculative_tokens": 3})
    with engine_serve_process("--model", str(target), "--served-model-name", "tiny", "--num-blocks", "128",
                              "--speculative-config", spec) as (url, _):
        answer = sdk(url).completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=24, temperature=0)
        metrics = httpx.get(f"{url}/metrics").text
    assert answer.usage is not None and answer.usage.completion_tokens == 24
    expected = plain(target, GREEDY, [PROMPTS[1]])["r0"]
    from transformers import AutoTokenizer

    assert answer.choices[0].text == AutoTokenizer.from_pretrained(target).decode(expected, skip_special_tokens=True)
    accepted = [line for line in metrics.splitlines() if line.startswith("pitstop_engine_spec_decode_accepted_tokens_total")]
    assert accepted and float(accepted[0].split()[-1]) > 0


def test_a_level_2_sleep_reloads_the_head_by_eagle3s_names(target: Path, heads: dict[str, Path]) -> None:
    """Its weights (the `midlayer.*` read as `layers.0.*`, the d2t map) dropped and read back from its folder:
    the same tensors, answers and drafts held."""
    from engine.eagle3 import Eagle3Runner
    from tests.engine.test_async_engine import run

    engine = build_engine(target, num_blocks=64, device="cpu", speculative=eagle3(heads["random"]))
    head = engine.engine.scheduler.drafter.runner  # type: ignore[union-attr]
    assert isinstance(head, Eagle3Runner)
    saved = [t.clone() for t in [*head.head.parameters(), head.head.draft_to_target]]

    async def answers_and_held() -> tuple[list[list[int]], int]:
        tokens = [[t async for out in engine.generate(prompt, GREEDY) for t in out.new_token_ids] for prompt in PROMPTS[:2]]
        return tokens, engine.engine.stats().spec.draft_tokens

    async def main() -> None:
        before = await answers_and_held()
        await engine.sleep(2)
        assert head.head.draft_to_target.untyped_storage().nbytes() == 0 and head.weights_stale
        assert (await engine.wake_up()).reloaded_weights
        now = [*head.head.parameters(), head.head.draft_to_target]
        assert all(torch.equal(a, b) for a, b in zip(now, saved, strict=True))
        after = await answers_and_held()
        assert after[0] == before[0] == [plain(target, GREEDY, PROMPTS[:2])[f"r{i}"] for i in range(2)]
        await engine.shutdown()

    run(main())
