"""Mamba-2 hybrids (Bamba, Granite 4.0-H) against transformers: tiny random checkpoints transformers saved
generate the same greedy tokens through the runner whole or in small prefill chunks (the SSD scan continuing
a slot's state), in a batch of prompts of different lengths (decodes batched over their slots beside prefill
chunks), through the engine with requests preempted and recomputed (their slots given back and zeroed) and
over HTTP with the openai SDK, a session pin's second turn included. The Hub configs parse to their layouts;
what the engine does not serve on them is refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.mamba_state import MambaStatePool, hybrid_state_bytes
from engine.model.config import ModelConfig
from engine.model.lora import LoRAError
from engine.model.mamba_config import UnsupportedHybrid
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import (
    random_prompt,
    runner_batched_greedy,
    runner_greedy,
    transformers_greedy,
)
from tests.engine.mamba_checkpoints import (
    BAMBA_9B,
    GRANITE_4_H_TINY,
    KINDS,
    NEMOTRON_H_8B,
    save_hybrid,
    save_serving_hybrid,
)
from tests.engine.serving import engine_server, sdk


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mamba_hybrids")
    return {kind: save_hybrid(kind, root / kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_match_transformers_whole_and_in_small_chunks(checkpoints: dict[str, Path], kind: str) -> None:
    """A 29-token prompt spans four 8-token SSD chunks; 5-token prefill chunks start mid-chunk each time."""
    prompt = random_prompt(29, seed=5)
    expected = transformers_greedy(checkpoints[kind], prompt, 10)
    assert len(set(expected)) > 3
    runner = TorchModelRunner(checkpoints[kind], num_blocks=32, block_size=4, device="cpu", num_state_slots=2)
    assert runner_greedy(runner, prompt, 10, chunk=64) == expected
    assert runner_greedy(runner, prompt, 10, chunk=5) == expected


def test_a_batch_of_prompts_of_different_lengths_decodes_over_its_slots(checkpoints: dict[str, Path]) -> None:
    prompts = [random_prompt(n, seed=n) for n in (3, 17, 26)]
    runner = TorchModelRunner(checkpoints["granite"], num_blocks=64, block_size=4, device="cpu", num_state_slots=3)
    got = runner_batched_greedy(runner, prompts, 8, chunk=6, blocks_each=16)
    assert got == [transformers_greedy(checkpoints["granite"], prompt, 8) for prompt in prompts]


def _engine(model_dir: Path, blocks: int, **config: object) -> LLMEngine:
    return LLMEngine(EngineConfig(block_size=4, num_blocks=blocks, max_model_len=256, max_num_seqs=8,
                                  max_num_batched_tokens=16, **config),  # type: ignore[arg-type]
                     TorchModelRunner(model_dir, blocks, 4, device="cpu", num_state_slots=3))


def _run(engine: LLMEngine, prompts: dict[str, list[int]], new_tokens: int) -> dict[str, Sequence]:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    seqs = {name: engine.add_request(name, prompt, params) for name, prompt in prompts.items()}
    while engine.has_unfinished():
        engine.step()
    return seqs


def test_preempted_requests_recompute_from_a_zeroed_slot(checkpoints: dict[str, Path]) -> None:
    """Three requests in 20 blocks of 4 (the attention layer's), two sharing 12 prompt tokens: they preempt each
    other and recompute; no prefix-cache hit without a session snapshot (a state cannot come from cached KV);
    running requests are capped at the 3 slots, and every slot is free once they finish."""
    model = checkpoints["bamba"]
    engine = _engine(model, 20)
    assert engine.config.max_num_seqs == 3
    prompts = {f"p{i}": random_prompt(22, seed=40 + i) for i in range(3)}
    prompts["p2"] = prompts["p0"][:12] + prompts["p2"][12:]
    got = _run(engine, prompts, 14)
    assert engine.scheduler.num_preemptions > 0
    for name, prompt in prompts.items():
        assert got[name].output_token_ids == transformers_greedy(model, prompt, 14), name
        assert got[name].num_cached_tokens == 0
    pool = engine.runner.mamba_states  # type: ignore[attr-defined]
    assert isinstance(pool, MambaStatePool) and pool.num_free_slots == 3


@pytest.mark.parametrize(("prompt_len", "first_tokens", "resumed"), [(21, 6, 24), (22, 2, 20), (21, 4, 20)])
def test_a_sessions_next_turn_resumes_from_its_kept_state(checkpoints: dict[str, Path], prompt_len: int,
                                                           first_tokens: int, resumed: int) -> None:
    """The first turn's state at its last block boundary that its pin holds (taken at a decode step's start, or
    inside a prefill chunk; a turn's final block is never registered) is kept with its session; the second turn
    takes that many tokens from the cache and answers as transformers does over the whole conversation. The same
    prompt outside the session computes everything, and so does a session turn that does not go on from the
    last."""
    model = checkpoints["granite"]
    engine = _engine(model, 64, enable_prefix_caching=True)
    params = SamplingParams(max_tokens=first_tokens, temperature=0.0, ignore_eos=True)
    first = random_prompt(prompt_len, seed=prompt_len)
    turn = engine.add_request("t1", first, params, session_id="agent", pin_ttl_s=60)
    while engine.has_unfinished():
        engine.step()
    assert turn.output_token_ids == transformers_greedy(model, first, first_tokens)
    second = first + turn.output_token_ids + random_prompt(7, seed=99)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = transformers_greedy(model, second, 8)
    for request_id, session in (("t2", "agent"), ("plain", None)):
        seq = engine.add_request(request_id, second, params, session_id=session)
        while engine.has_unfinished():
            engine.step()
        assert seq.output_token_ids == expected, request_id
        assert seq.num_cached_tokens == (resumed if session else 0), request_id
    # A prompt whose blocks another request left cached, then in the session: it does not go on from the last turn.
    other, params = random_prompt(48, seed=7), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    expected = transformers_greedy(model, other, 4)
    for request_id, session in (("plain2", None), ("t3", "agent")):
        seq = engine.add_request(request_id, other, params, session_id=session)
        while engine.has_unfinished():
            engine.step()
        assert seq.output_token_ids == expected and seq.num_cached_tokens == 0, request_id


def test_a_sequence_with_computed_tokens_but_no_slot_is_refused(checkpoints: dict[str, Path]) -> None:
    """What a prefix-cache hit would look like: refused rather than answered from a zero state."""
    from engine.batch import ScheduledBatch
    from tests.engine.hf_checkpoints import give_blocks

    runner = TorchModelRunner(checkpoints["bamba"], num_blocks=16, block_size=4, device="cpu", num_state_slots=1)
    seq = Sequence("s", random_prompt(12), SamplingParams(temperature=0.0), 0.0)
    give_blocks(runner, seq, list(range(1, 5)))
    seq.num_computed_tokens = 8
    batch = ScheduledBatch()
    batch.add(seq, 4)
    with pytest.raises(RuntimeError, match="no Mamba state slot"):
        runner.execute(batch)


def test_a_slot_is_given_back_at_preemption_and_finish(checkpoints: dict[str, Path]) -> None:
    """One slot: a preempted sequence's goes to the next one at once (it will recompute from zero), a finished
    one's too; a second sequence starting while the slot is held is refused."""
    from engine.batch import ScheduledBatch
    from engine.sequence import SequenceStatus

    spec = ModelConfig.from_dir(checkpoints["bamba"]).hybrid
    assert spec is not None
    pool = MambaStatePool(spec, 1, torch.float32, torch.device("cpu"))
    seqs = [Sequence(name, random_prompt(6), SamplingParams(), 0.0) for name in "abc"]

    def start(seq: Sequence) -> None:
        batch = ScheduledBatch()
        batch.add(seq, 6)
        pool.begin_step(batch)

    start(seqs[0])
    assert pool.slot_of("a") == 0 and pool.num_free_slots == 0
    with pytest.raises(RuntimeError, match="no free Mamba state slot"):
        start(seqs[1])
    seqs[0].num_preemptions += 1  # what Scheduler._preempt does, with the status back to WAITING
    assert pool.num_free_slots == 1 and pool.slot_of("a") is None
    start(seqs[2])
    seqs[2].status = SequenceStatus.FINISHED
    assert pool.num_free_slots == 1


def test_hub_configs_parse_to_their_layouts() -> None:
    granite = ModelConfig.from_dict(GRANITE_4_H_TINY)
    spec = granite.hybrid
    assert spec is not None and not spec.rope and spec.logits_scaling == 6 and spec.residual_multiplier == 0.22
    assert granite.num_kv_layers == 4 and spec.mamba_layers[:6] == (0, 1, 2, 3, 4, 6)
    assert granite.embed_scale == 12 and granite.attention_scale == 0.0078125
    assert granite.num_experts == 64 and granite.moe_intermediate_size == 512 and granite.tie_word_embeddings
    # A sequence's state in bf16 over the 36 mixers: conv (3,072 + 256 channels x 3) and SSM (48 x 64 x 128).
    assert spec.state_bytes(2) == 36 * (3328 * 3 + 48 * 64 * 128) * 2
    bamba = ModelConfig.from_dict(BAMBA_9B)
    assert bamba.hybrid is not None and bamba.num_kv_layers == 3 and bamba.rotary_dim == 64
    assert len(bamba.hybrid.mamba_layers) == 29 and bamba.hybrid.dt_limit == (0.0, float("inf"))
    nemotron = ModelConfig.from_dict(NEMOTRON_H_8B)  # 24 mixers, 4 attention layers, 24 MLPs
    spec = nemotron.hybrid
    assert spec is not None and not spec.rope and nemotron.num_kv_layers == 4 and len(spec.mamba_layers) == 24
    assert spec.mlp_layers[:2] == (1, 3) and spec.intermediate_size == 8192 and spec.n_groups == 8
    with pytest.raises(UnsupportedHybrid, match="mixture-of-experts"):
        ModelConfig.from_dict({**NEMOTRON_H_8B, "hybrid_override_pattern": "ME*E"})


def test_state_slots_come_out_of_the_kv_budget(checkpoints: dict[str, Path]) -> None:
    from engine.build import build_engine
    from engine.byte_tokenizer import ByteTokenizer

    model = checkpoints["granite"]
    state = hybrid_state_bytes(model, 4, "cpu")
    config = ModelConfig.from_dir(model)
    assert config.hybrid is not None and state == 2 * 4 * config.hybrid.state_bytes(4)  # with session slots
    block = TorchModelRunner.kv_bytes_per_block(config, 4, torch.float32)  # the one attention layer's
    assert block == 2 * 1 * 4 * 2 * 8 * 4
    engine = build_engine(model, kv_cache_memory_bytes=state + 10 * block, block_size=4, max_num_seqs=4,
                          device="cpu", tokenizer=ByteTokenizer())
    assert engine.engine.config.num_blocks == 10 and engine.engine.config.max_num_seqs == 4
    with pytest.raises(ValueError, match="at least one block"):
        build_engine(model, kv_cache_memory_bytes=state, block_size=4, max_num_seqs=4, device="cpu",
                     tokenizer=ByteTokenizer())


@pytest.mark.parametrize("option", [{"kv_cache_dtype": "fp8_e4m3"}, {"quantization": "int8"},
                                    {"tensor_parallel_size": 2}, {"num_host_blocks": 4}])
def test_what_a_hybrid_does_not_serve_is_refused_at_load(checkpoints: dict[str, Path], option: dict) -> None:
    with pytest.raises(UnsupportedHybrid, match="Mamba-2 hybrid"):
        TorchModelRunner(checkpoints["bamba"], 8, 4, device="cpu", **option)


def test_speculative_decoding_and_lora_are_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    runner = TorchModelRunner(checkpoints["bamba"], 8, 4, device="cpu", num_state_slots=2)
    with pytest.raises(UnsupportedHybrid, match="speculative decoding"):
        LLMEngine(EngineConfig(block_size=4, num_blocks=8, speculative=SpeculativeConfig(num_speculative_tokens=2)),
                  runner)
    with pytest.raises(LoRAError, match="Mamba-2 hybrid"):
        runner.load_lora(tmp_path, max_rank=8)


def test_served_over_http_with_a_session_as_transformers(tmp_path: Path) -> None:
    """Two turns of one agent session (pinned between them) and a plain request, through the openai SDK."""
    model_dir = save_serving_hybrid("granite", tmp_path / "served")
    first = Tokenizer(model_dir).encode("def f(x):\n    return x * 2\n")
    with engine_server(model_dir, block_size=4, max_num_seqs=4) as url:
        client = sdk(url)
        session = {"ignore_eos": True, "return_token_ids": True, "session_id": "agent-1", "pin_ttl_s": 30}
        answer = client.completions.create(model="tiny", prompt=first, max_tokens=8, temperature=0.0,
                                           extra_body=session)
        assert answer.choices[0].token_ids == transformers_greedy(model_dir, first, 8)  # type: ignore[attr-defined]
        second = first + answer.choices[0].token_ids + first[:5]  # type: ignore[attr-defined]
        again = client.completions.create(model="tiny", prompt=second, max_tokens=8, temperature=0.0,
                                          extra_body=session)
        assert again.choices[0].token_ids == transformers_greedy(model_dir, second, 8)  # type: ignore[attr-defined]
