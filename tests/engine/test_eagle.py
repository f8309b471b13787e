"""EAGLE speculative decoding (engine/eagle.py, engine/eagle_head.py) on the torch runner and a tiny Llama:
greedy and seeded (coupled) answers are plain decoding's token for token, one request or several, through
chunked prefills, preemption and prefix-cache hits; a head trained on the target's own continuations
(engine/tiny_eagle.py, transformers' Llama layer as its training body) gets its drafts accepted, far more
than a random head; a head that does not fit the target is refused at load; served over HTTP."""

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
from engine.eagle import EagleProposer
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.server.app import create_app
from engine.tiny_eagle import make_tiny_eagle_head, random_prompts, train_eagle_head, training_body
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import sdk, serve_in_thread

PROMPTS = random_prompts(8, 12, 1024)  # the trained head's: its drafts hold on these prompts' continuations
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=24, ignore_eos=True)
PLAIN: dict[tuple, dict[str, list[int]]] = {}  # plain decoding's answers, by (params, prompts)


@pytest.fixture(scope="module")
def heads(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eagle")
    return {"trained": train_eagle_head(tiny_model_dir, root / "trained", PROMPTS, new_tokens=24, steps=80),
            "random": make_tiny_eagle_head(tiny_model_dir, root / "random", seed=1, embed=True)}


def eagle(head: Path, k: int = 3, acceptance_method: str = "coupled") -> SpeculativeConfig:
    return SpeculativeConfig(method="eagle", model=str(head), num_speculative_tokens=k,
                             acceptance_method=acceptance_method)


def run(model_dir: Path, spec: SpeculativeConfig | None, params: SamplingParams, prompts: list[list[int]],
        num_blocks: int = 256, chunk: int = 512) -> tuple[dict[str, list[int]], LLMEngine]:
    config = EngineConfig(block_size=4, num_blocks=num_blocks, max_model_len=512, max_num_batched_tokens=256,
                          long_prefill_token_threshold=chunk, speculative=spec)
    engine = LLMEngine(config, TorchModelRunner(model_dir, num_blocks, 4))
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return {rid: [t for out in outs for t in out.new_token_ids] for rid, outs in outputs.items()}, engine


def acceptance(engine: LLMEngine) -> float:
    spec = engine.stats().spec
    return spec.accepted_tokens / spec.draft_tokens


def plain(model_dir: Path, params: SamplingParams, prompts: list[list[int]]) -> dict[str, list[int]]:
    """Plain decoding's answers (the cache size and chunking change none of them), computed once."""
    key = (params, tuple(map(tuple, prompts)))
    if key not in PLAIN:
        PLAIN[key] = run(model_dir, None, params, prompts)[0]
    return PLAIN[key]


@pytest.mark.parametrize(("params", "count"), [(GREEDY, 1), (GREEDY, 5), (SEEDED, 5)],
                         ids=["greedy-single", "greedy-batch", "seeded-batch"])
def test_answers_are_plain_decodings(tiny_model_dir: Path, heads: dict[str, Path], params: SamplingParams,
                                     count: int) -> None:
    prompts = PROMPTS[:count]
    fast, engine = run(tiny_model_dir, eagle(heads["trained"]), params, prompts)
    assert fast == plain(tiny_model_dir, params, prompts)
    assert engine.stats().spec.accepted_tokens > 0  # a sampled answer leaves the greedy ones it was trained on
    assert engine.num_steps < params.max_tokens or not params.greedy


def test_a_trained_head_is_accepted_far_more_than_a_random_one(tiny_model_dir: Path, heads: dict[str, Path]) -> None:
    rates = {}
    for name, head in heads.items():
        fast, engine = run(tiny_model_dir, eagle(head), GREEDY, PROMPTS[:5])
        assert fast == plain(tiny_model_dir, GREEDY, PROMPTS[:5])
        rates[name] = acceptance(engine)
    assert rates["trained"] > 0.4 and rates["trained"] > 5 * rates["random"], rates


def test_rejection_sampling_keeps_greedy_answers_and_drafts_with_distributions(tiny_model_dir: Path,
                                                                               heads: dict[str, Path]) -> None:
    spec = eagle(heads["trained"], acceptance_method="rejection_sampler")
    fast, engine = run(tiny_model_dir, spec, GREEDY, PROMPTS[:5])
    assert fast == plain(tiny_model_dir, GREEDY, PROMPTS[:5]) and acceptance(engine) > 0.4
    sampled, engine = run(tiny_model_dir, spec, SEEDED, PROMPTS[:3])
    assert all(len(tokens) == 24 for tokens in sampled.values()) and engine.stats().spec.accepted_tokens > 0


def test_chunked_prefill_long_and_one_token_prompts_match(tiny_model_dir: Path, heads: dict[str, Path]) -> None:
    rng = random.Random(5)
    prompts = [PROMPTS[0], [rng.randrange(1000) for _ in range(70)], [rng.randrange(1000) for _ in range(33)], [17]]
    fast, engine = run(tiny_model_dir, eagle(heads["trained"]), GREEDY, prompts, chunk=16)
    assert fast == plain(tiny_model_dir, GREEDY, prompts) and engine.stats().spec.accepted_tokens > 0


def test_preemption_rebuilds_shadows_and_answers_match(tiny_model_dir: Path, heads: dict[str, Path]) -> None:
    fast, engine = run(tiny_model_dir, eagle(heads["trained"], k=4), GREEDY, PROMPTS[:5], num_blocks=28)
    assert fast == plain(tiny_model_dir, GREEDY, PROMPTS[:5])
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.blocks.used == 0 and stats.spec.accepted_tokens > 0
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, EagleProposer)
    assert proposer.block_manager.stats().used == 0 and not proposer.shadows and not proposer.features.chunks


def test_a_prefix_cache_hit_in_both_caches_or_the_targets_alone(tiny_model_dir: Path, heads: dict[str, Path]) -> None:
    """The same prompt twice, one after the other: the second finds its blocks in the target's cache and
    the head's, and drafts as well; with the head's cache emptied in between, it reads zero features for
    the prefix the target skipped and the answer is still plain decoding's."""
    config = EngineConfig(block_size=4, num_blocks=256, max_model_len=512, speculative=eagle(heads["trained"]))
    engine = LLMEngine(config, TorchModelRunner(tiny_model_dir, 256, 4))
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, EagleProposer)
    answers, rates = [], []
    for i, reset in enumerate((False, False, True)):
        if reset:
            proposer.block_manager.reset_prefix_cache()
        before = engine.stats().spec
        engine.add_request(f"r{i}", PROMPTS[0], GREEDY)
        tokens: list[int] = []
        while engine.has_unfinished():
            tokens += [t for out in engine.step() for t in out.new_token_ids]
        after = engine.stats().spec
        answers.append(tokens)
        rates.append((after.accepted_tokens - before.accepted_tokens) / (after.draft_tokens - before.draft_tokens))
    assert answers[0] == answers[1] == answers[2] == plain(tiny_model_dir, GREEDY, PROMPTS[:1])["r0"]
    assert proposer.block_manager.stats().prefix_hit_tokens >= 8 and engine.block_manager.stats().prefix_hit_tokens >= 16
    assert rates[1] == rates[0] > 0.4


def test_a_head_for_another_model_is_refused(tiny_model_dir: Path, heads: dict[str, Path], tmp_path: Path) -> None:
    def variant(name: str, config_change: dict | None = None, drop: str | None = None, reshape: str | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        config = json.loads((heads["random"] / "config.json").read_text()) | (config_change or {})
        (folder / "config.json").write_text(json.dumps(config))
        weights = load_file(str(heads["random"] / "model.safetensors"))
        weights.pop(drop or "", None)
        if reshape:
            weights[reshape] = weights[reshape][:, :-1].contiguous()
        save_file(weights, str(folder / "model.safetensors"))
        return folder

    cases = {variant("vocab", {"vocab_size": 2048}): "vocab_size \\(2048\\) is not the target's \\(1024\\)",
             variant("hidden", {"hidden_size": 32}): "hidden_size \\(32\\) is not the target's \\(64\\)",
             variant("no_fc", drop="fc.weight"): "no fc.weight",
             variant("embed", reshape="embed_tokens.weight"): "embed_tokens.weight is \\(1024, 63\\)",
             variant("layer", drop="layers.0.mlp.up_proj.weight"): "no layers.0.mlp.up_proj.weight",
             tmp_path: "not a model folder"}
    for folder, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            build_engine(tiny_model_dir, num_blocks=64, speculative=eagle(folder))
    with pytest.raises(ValueError, match="method 'eagle' drafts with a model"):
        SpeculativeConfig(method="eagle")


def test_served_over_http_with_the_openai_sdk(tiny_model_dir: Path, heads: dict[str, Path]) -> None:
    def app(speculative: SpeculativeConfig | None):
        return create_app(build_engine(tiny_model_dir, num_blocks=128, block_size=16, max_model_len=512,
                                       speculative=speculative), "tiny")

    with serve_in_thread(app(None)) as plain, serve_in_thread(app(eagle(heads["trained"]))) as fast:
        answers = [sdk(url).completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=30, temperature=0)
                   for url in (plain, fast)]
        assert answers[0].choices[0].text == answers[1].choices[0].text and answers[0].choices[0].text
        metrics = httpx.get(f"{fast}/metrics").text
    accepted = [line for line in metrics.splitlines()
                if line.startswith("pitstop_engine_spec_decode_accepted_tokens_total")]
    assert accepted and float(accepted[0].split()[-1]) > 0


def hf_drafts(target: torch.nn.Module, body: torch.nn.Module, fc: torch.nn.Linear, tokens: list[int],
              k: int) -> list[int]:
    """k greedy drafts after `tokens` as transformers' Llama layer computes them from the target's features
    (after its final norm): row j reads token j + 1 and feature j, a draft's row the head's output before it."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        features = target.model(ids).last_hidden_state
        inputs = fc(torch.cat([target.model.embed_tokens(ids[:, 1:]), features[:, :-1]], dim=-1))
        drafts: list[int] = []
        for _ in range(k):
            out = body(inputs_embeds=inputs).last_hidden_state[:, -1:]
            drafts.append(int(target.lm_head(out[0, 0]).argmax()))
            row = fc(torch.cat([target.model.embed_tokens(torch.tensor([[drafts[-1]]])), out], dim=-1))
            inputs = torch.cat([inputs, row], dim=1)
    return drafts


@pytest.mark.parametrize("name", ["trained", "random"])
def test_the_heads_drafts_are_the_transformers_layers(tiny_model_dir: Path, heads: dict[str, Path], name: str) -> None:
    """Every proposal of a few steps (drafts held and rejected) is what transformers' Llama layer, the
    head's training body, computes from scratch on the request's tokens."""
    from transformers import LlamaForCausalLM

    config = EngineConfig(block_size=4, num_blocks=64, max_model_len=512, speculative=eagle(heads[name], k=3))
    engine = LLMEngine(config, TorchModelRunner(tiny_model_dir, 64, 4))
    proposer = engine.scheduler.drafter
    assert isinstance(proposer, EagleProposer)
    seen: list[tuple[list[int], list[int]]] = []  # (the request's tokens, the head's drafts)
    propose = proposer.propose

    def recorded(requests: list) -> list[list[int]]:
        drafts = propose(requests)
        seen.append((list(requests[0][0].token_ids), drafts[0]))
        return drafts

    proposer.propose = recorded  # type: ignore[method-assign]
    engine.add_request("r", PROMPTS[2], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    target = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    body, fc = training_body(tiny_model_dir, heads[name])
    checked = [(tokens, drafts) for tokens, drafts in seen if len(drafts) == 3]
    assert len(checked) >= 3
    for tokens, drafts in checked:
        assert drafts == hf_drafts(target, body, fc, tokens, 3)
