"""Speculative decoding with a draft model (engine/draft_model.py) on the torch runner, under the coupled
acceptance method: the answers are plain decoding's whatever the draft (the target itself, its first layer,
an unrelated random model), greedy, seeded, with penalties and `logit_bias`, log-probabilities and grammars;
sampled requests draft with the noise they are sampled with, so a draft that is the target is always right;
the draft's cache is its own, prefix cache included, and gives its blocks back; what cannot draft is
refused; served over HTTP and by the gateway. The default, rejection sampling: test_rejection_sampling.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.build import build_engine
from engine.config import EngineConfig, SpeculativeConfig
from engine.draft_model import DraftModelProposer
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.server.app import create_app
from engine.structured_output import OutputConstraint
from engine.tiny_model import make_tiny_model, make_truncated_model
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import sdk, serve_in_thread
from tests.engine.test_speculation_torch import generate as generate_with
from tests.engine.test_speculation_torch import tokens

BIAS = tuple((t, 3.0) for t in (300, 301, 302, 303, 304, 305))  # a nudge: answers still vary


@pytest.fixture(scope="module")
def drafts(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Draft models for the tiny target: itself, its first layer, an unrelated random model, one whose
    positions end at 64, and one with another vocabulary."""
    root = tmp_path_factory.mktemp("drafts")
    return {"self": tiny_model_dir, "first_layer": make_truncated_model(tiny_model_dir, root / "first_layer", 1),
            "unrelated": make_tiny_model(root / "unrelated", layers=1, hidden=32, seed=7),
            "short": make_tiny_model(root / "short", layers=1, hidden=32, seed=7, max_position_embeddings=64),
            "other_vocab": make_tiny_model(root / "other_vocab", layers=1, hidden=32, vocab_size=512)}


def generate(model_dir: Path, draft: Path | SpeculativeConfig | None, params: SamplingParams, *, num_blocks: int = 256,
             requests: int = 5, tokenizer: Tokenizer | None = None, k: int = 4,
             ) -> tuple[dict[str, list[RequestOutput]], LLMEngine]:
    """`draft`: a draft model's folder (k drafts, the coupled rule), a whole speculative config, or None (plain
    decoding)."""
    spec = SpeculativeConfig(model=str(draft), num_speculative_tokens=k, acceptance_method="coupled") \
        if isinstance(draft, Path) else draft
    return generate_with(model_dir, spec, params, num_blocks, tokenizer, requests)


def drafter(engine: LLMEngine) -> DraftModelProposer:
    assert isinstance(engine.scheduler.drafter, DraftModelProposer)
    return engine.scheduler.drafter


PARAMS = {
    "greedy": SamplingParams(temperature=0, max_tokens=60, ignore_eos=True),
    "seeded": SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=60, ignore_eos=True),
    "processed": SamplingParams(temperature=0.7, top_k=50, seed=3, max_tokens=60, logit_bias=BIAS,
                                repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.2, min_tokens=30),
}


@pytest.mark.parametrize("name", ["self", "first_layer", "unrelated"])
@pytest.mark.parametrize("kind", list(PARAMS))
def test_answers_are_plain_decodings_whatever_the_draft(tiny_model_dir: Path, drafts: dict[str, Path],
                                                        name: str, kind: str) -> None:
    plain, plain_engine = generate(tiny_model_dir, None, PARAMS[kind])
    fast, engine = generate(tiny_model_dir, drafts[name], PARAMS[kind])
    assert tokens(fast) == tokens(plain)
    spec = engine.stats().spec
    assert spec.draft_tokens > 0 and spec.draft_passes > 0
    if name == "self":  # the target drafting for itself, with its own noise: every draft holds
        assert spec.accepted_tokens == spec.draft_tokens
        assert engine.num_steps < plain_engine.num_steps / 3
    assert drafter(engine).block_manager.stats().used == 0  # every shadow gave its blocks back


def test_unseeded_samples_draft_with_their_own_noise_and_stay_fresh(tiny_model_dir: Path,
                                                                    drafts: dict[str, Path]) -> None:
    """An unseeded sampled request is given a seed: the target drafting for itself is always right, and two
    requests of one prompt still answer apart."""
    config = EngineConfig(block_size=4, num_blocks=256, max_model_len=512,
                          speculative=SpeculativeConfig(model=str(drafts["self"]), acceptance_method="coupled"))
    engine = LLMEngine(config, TorchModelRunner(tiny_model_dir, 256, 4))
    params = SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)
    for i in range(2):
        engine.add_request(f"r{i}", [5, 6, 7, 8, 9], params)
    seeds = {rid: seq.params.seed for rid, seq in engine.sequences.items()}
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    answers = tokens(outputs)
    assert all(seed is not None for seed in seeds.values()) and seeds["r0"] != seeds["r1"]
    assert answers["r0"] != answers["r1"] and all(len(a) == 40 for a in answers.values())
    spec = engine.stats().spec
    assert spec.draft_tokens > 0 and spec.accepted_tokens == spec.draft_tokens


def test_ngram_speculation_leaves_unseeded_requests_unseeded(tiny_model_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(block_size=4, num_blocks=64, speculative=SpeculativeConfig()),
                       TorchModelRunner(tiny_model_dir, 64, 4))
    seq = engine.add_request("r", [1, 2, 3], SamplingParams(temperature=1.0, max_tokens=4))
    assert seq.params.seed is None


def test_log_probabilities_are_plain_decodings(tiny_model_dir: Path, drafts: dict[str, Path]) -> None:
    params = SamplingParams(temperature=0, max_tokens=30, logprobs=2, ignore_eos=True)
    plain, _ = generate(tiny_model_dir, None, params)
    fast, engine = generate(tiny_model_dir, drafts["first_layer"], params)
    assert engine.stats().spec.accepted_tokens > 0
    for rid, outs in plain.items():
        expected = [lp for out in outs for lp in out.logprobs or ()]
        got = [lp for out in fast[rid] for lp in out.logprobs or ()]
        assert len(got) == len(expected) == 30
        for a, b in zip(got, expected, strict=True):
            assert a.top_ids == b.top_ids and a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_memory_pressure_preempts_and_answers_still_match(tiny_model_dir: Path, drafts: dict[str, Path]) -> None:
    """Few blocks: requests are preempted and recomputed (their shadows dropped and rebuilt), and the
    draft's cache, as small as the target's, at times leaves a request undrafted."""
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    plain, _ = generate(tiny_model_dir, None, params, num_blocks=48, requests=6)
    fast, engine = generate(tiny_model_dir, drafts["self"], params, num_blocks=48, requests=6, k=6)
    assert tokens(fast) == tokens(plain)
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.blocks.used == 0 and stats.spec.accepted_tokens > 0
    assert drafter(engine).block_manager.stats().used == 0 and not drafter(engine).shadows


def test_the_drafts_prefix_cache_serves_a_shared_prompt(tiny_model_dir: Path, drafts: dict[str, Path]) -> None:
    config = EngineConfig(block_size=4, num_blocks=256, max_model_len=512,
                          speculative=SpeculativeConfig(model=str(drafts["first_layer"])))
    engine = LLMEngine(config, TorchModelRunner(tiny_model_dir, 256, 4))
    prompt = list(range(10, 90))
    params = SamplingParams(temperature=0, max_tokens=8)
    for i in range(2):  # one after the other: the second finds the first's blocks in both caches
        engine.add_request(f"r{i}", prompt, params)
        while engine.has_unfinished():
            engine.step()
    blocks = drafter(engine).block_manager.stats()
    assert blocks.prefix_hit_tokens >= 76 and blocks.used == 0


def test_a_draft_with_a_shorter_context_stops_drafting_at_its_end(tiny_model_dir: Path,
                                                                  drafts: dict[str, Path]) -> None:
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    plain, _ = generate(tiny_model_dir, None, params)
    fast, engine = generate(tiny_model_dir, drafts["short"], params)  # prompts of 4-50, answers past 64
    assert tokens(fast) == tokens(plain)
    assert 0 < engine.stats().spec.draft_tokens < 5 * 4 * 59


SCHEMA = {"type": "object", "required": ["name", "days"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 12}, "days": {"enum": [1, 2, 3]}}}


def test_answers_held_to_a_grammar_match(tiny_model_dir: Path, drafts: dict[str, Path]) -> None:
    """The draft writes unconstrained; the engine keeps only the drafts the grammar allows."""
    tokenizer = Tokenizer(tiny_model_dir)
    params = SamplingParams(temperature=0.9, seed=4, max_tokens=120, constraint=OutputConstraint.json_schema(SCHEMA))
    plain, _ = generate(tiny_model_dir, None, params, tokenizer=tokenizer)
    fast, engine = generate(tiny_model_dir, drafts["self"], params, tokenizer=tokenizer)
    assert tokens(fast) == tokens(plain)
    assert engine.stats().spec.accepted_tokens > 0
    for outs in fast.values():
        assert set(json.loads("".join(out.text_delta for out in outs))) == {"name", "days"}


def test_what_cannot_draft_is_refused(tiny_model_dir: Path, drafts: dict[str, Path], tmp_path: Path) -> None:
    def engine(spec: SpeculativeConfig) -> LLMEngine:
        return LLMEngine(EngineConfig(num_blocks=16, speculative=spec), TorchModelRunner(tiny_model_dir, 16, 16))

    with pytest.raises(ValueError, match=r"vocabulary \(512 tokens\) is not the target's \(1024\)"):
        engine(SpeculativeConfig(model=str(drafts["other_vocab"])))
    with pytest.raises(ValueError, match="is not a model folder"):
        engine(SpeculativeConfig(model=str(tmp_path)))
    with pytest.raises(ValueError, match="give its folder as `model`"):
        SpeculativeConfig(method="draft_model")
    with pytest.raises(ValueError, match="drafts without a model"):
        SpeculativeConfig(method="ngram", model="m")
    with pytest.raises(ValueError, match="give draft_step_time_profile"):
        SpeculativeConfig(model="m", draft_policy="goodput")
    with pytest.raises(ValueError, match="it needs both"):
        SpeculativeConfig(draft_policy="goodput", draft_step_time_profile="d.json")
    with pytest.raises(ValueError, match="draft_step_time_profile .*none.json' is not a step-time profile"):
        engine(SpeculativeConfig(model=str(drafts["self"]), draft_policy="goodput", step_time_profile=str(
            profile_pair(tmp_path)[0]), draft_step_time_profile=str(tmp_path / "none.json")))
    assert SpeculativeConfig(model="m").method == "draft_model" and SpeculativeConfig().method == "ngram"


def test_a_simulated_engine_refuses_a_draft_model(tmp_path: Path, drafts: dict[str, Path]) -> None:
    from engine.step_time import LinearStepTime, save_profile

    save_profile(tmp_path / "p.json", LinearStepTime(c0=1e-3))
    with pytest.raises(ValueError, match="a simulated engine drafts with method 'ngram'"):
        build_engine(sim_profile=tmp_path / "p.json", num_blocks=16,
                     speculative=SpeculativeConfig(model=str(drafts["self"])))


def test_truncated_models_keep_their_first_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    whole = make_truncated_model(tiny_model_dir, tmp_path / "whole", 2)
    for path, same in ((whole, True), (make_truncated_model(tiny_model_dir, tmp_path / "one", 1), False)):
        config = json.loads((path / "config.json").read_text())
        assert config["num_hidden_layers"] == (2 if same else 1)
        first, _ = generate(path, None, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), requests=2)
        target, _ = generate(tiny_model_dir, None, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                             requests=2)
        assert (tokens(first) == tokens(target)) is same
        assert Tokenizer(path).encode("a b c") == Tokenizer(tiny_model_dir).encode("a b c")
    with pytest.raises(ValueError, match="layers must be between 1 and the model's 2"):
        make_truncated_model(tiny_model_dir, tmp_path / "none", 3)


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, drafts: dict[str, Path]) -> Iterator[tuple[str, str]]:
    def app(speculative: SpeculativeConfig | None):
        engine = build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512, max_num_seqs=8,
                              speculative=speculative)
        return create_app(engine, "tiny")

    with serve_in_thread(app(None)) as plain, \
            serve_in_thread(app(SpeculativeConfig(model=str(drafts["first_layer"]), acceptance_method="coupled"))) as fast:
        yield plain, fast


def test_served_answers_match_and_the_draft_is_counted(servers: tuple[str, str]) -> None:
    plain_url, fast_url = servers
    asks = [{"messages": [{"role": "user", "content": "the quick brown fox"}], "max_tokens": 40, "temperature": 0},
            {"messages": [{"role": "user", "content": "jumps over"}], "max_tokens": 40, "temperature": 0.8, "seed": 5}]
    for ask in asks:
        answers = [sdk(url).chat.completions.create(model="tiny", **ask).choices[0].message.content  # type: ignore[call-overload]
                   for url in (plain_url, fast_url)]
        assert answers[0] == answers[1] and answers[0]
        streamed = sdk(fast_url).chat.completions.create(model="tiny", stream=True, **ask)  # type: ignore[call-overload]
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == answers[0]
    metrics = httpx.get(f"{fast_url}/metrics").text
    passes = [line for line in metrics.splitlines() if line.startswith("pitstop_engine_spec_decode_draft_passes_total")]
    assert passes and float(passes[0].split()[-1]) > 0


def profile_pair(root: Path, draft_share: float = 0.25) -> tuple[Path, Path]:
    """Step-time profiles for a target whose checked draft costs as much as a decoding request's row, and
    a draft whose pass costs `draft_share` of the target's decode step: a draft pays when it holds more
    than about 0.6 of the time."""
    from engine.step_time import LinearStepTime, save_profile

    target, draft = root / "target.json", root / "draft.json"
    save_profile(target, LinearStepTime(c0=1e-3, c_decode_seq=1e-4, c_prefill_token=2.5e-4, c_draft_token=1e-4))
    save_profile(draft, LinearStepTime(c0=draft_share * 1e-3, c_decode_seq=draft_share * 1e-4))
    return target, draft


def goodput(draft: Path, profiles: tuple[Path, Path]) -> SpeculativeConfig:
    return SpeculativeConfig(model=str(draft), draft_policy="goodput", step_time_profile=str(profiles[0]),
                             draft_step_time_profile=str(profiles[1]))


def test_goodput_stops_a_useless_draft_and_keeps_a_good_one(tiny_model_dir: Path, drafts: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """Priced by the two profiles, the unrelated draft's passes and checks are soon cut (a few probes stay,
    as its requests' estimates drift up); the target drafting for itself is found to pay and halves the steps
    plain decoding takes. The answers are plain decoding's either way."""
    profiles = profile_pair(tmp_path)
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    plain, plain_engine = generate(tiny_model_dir, None, params)
    for name in ("unrelated", "self"):
        fixed, fixed_engine = generate(tiny_model_dir, drafts[name], params)
        chosen, engine = generate(tiny_model_dir, goodput(drafts[name], profiles), params)
        assert tokens(chosen) == tokens(fixed) == tokens(plain)
        spec, fixed_spec = engine.stats().spec, fixed_engine.stats().spec
        if name == "unrelated":
            assert spec.draft_passes < fixed_spec.draft_passes / 4 and spec.draft_tokens < fixed_spec.draft_tokens / 4
            assert spec.draft_tokens > 0  # probes: estimates drift back and try again
        else:
            # found within some steps (the estimates start at the even prior, where drafting does not pay)
            assert spec.accepted_tokens == spec.draft_tokens > fixed_spec.draft_tokens / 2
            assert engine.num_steps < plain_engine.num_steps / 2


def test_a_long_prompt_is_caught_up_a_chunk_a_step(tiny_model_dir: Path, drafts: dict[str, Path]) -> None:
    """The draft computes at most `long_prefill_token_threshold` tokens of a request a pass: a long prompt
    is caught up over several steps (no drafts meanwhile), so no step waits on a whole draft prefill."""
    config = EngineConfig(block_size=4, num_blocks=256, max_model_len=512, long_prefill_token_threshold=32,
                          speculative=SpeculativeConfig(model=str(drafts["self"])))
    engine = LLMEngine(config, TorchModelRunner(tiny_model_dir, 256, 4))
    runner = drafter(engine).runner
    widest: list[int] = []
    execute = runner.execute
    runner.execute = lambda batch: (widest.append(max(batch.num_new_tokens)), execute(batch))[1]  # type: ignore[method-assign]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    prompt = [(7 * i) % 1000 for i in range(150)]
    engine.add_request("long", prompt, params)
    out: list[int] = []
    while engine.has_unfinished():
        for step in engine.step():
            out.extend(step.new_token_ids)
    plain = LLMEngine(EngineConfig(block_size=4, num_blocks=256, max_model_len=512), TorchModelRunner(tiny_model_dir, 256, 4))
    plain.add_request("long", prompt, params)
    expected: list[int] = []
    while plain.has_unfinished():
        for step in plain.step():
            expected.extend(step.new_token_ids)
    assert out == expected
    assert max(widest) == 32 and widest[:4] == [32, 32, 32, 32]  # 150 tokens: four chunks, then drafting
    assert engine.stats().spec.accepted_tokens > 0
