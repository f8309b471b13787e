"""Thinking budgets (`thinking_token_budget`, `reasoning_effort`): the block's state token by token, the
end tag forced once the budget is spent (by a scripted model, and by the tiny model's masked logits, with
and without speculative decoding), and the chat API over a real socket with the openai SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.server.app import create_app
from engine.thinking_budget import DEFAULT_EFFORT_BUDGETS, ThinkingBudget, ThinkingTags
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.fakes import CountingRunner, ScriptedRunner
from tests.engine.serving import sdk, serve_in_thread

TAGS = ThinkingTags(start=(1, 2), end=(8, 9))  # two-token tags, as a tokenizer without them as one token has


def _run(state: ThinkingBudget, tokens: list[int]) -> list[int | None]:
    """The forced token before each of `tokens` is observed."""
    forced = []
    for token in tokens:
        forced.append(state.forced())
        state.observe(token)
    return forced


def test_the_end_tag_is_forced_once_the_budget_is_spent_and_only_then() -> None:
    state = ThinkingBudget(3, TAGS)
    assert _run(state, [1, 2, 5, 5, 5, 8, 9, 7]) == [None, None, None, None, None, 8, 9, None]
    assert (state.phase, state.spent) == ("done", 3)
    closed = ThinkingBudget(3, TAGS)  # the model closes its block itself: nothing forced
    assert _run(closed, [1, 2, 5, 8, 9, 5, 5, 5]) == [None] * 8 and closed.phase == "done"
    plain = ThinkingBudget(0, TAGS)  # an answer that does not open a block is left alone
    assert _run(plain, [1, 5, 5]) == [None] * 3 and plain.phase == "done"
    opened = ThinkingBudget.for_prompt(0, TAGS, [4, 1, 2])  # the prompt opened it: budget 0 closes it at once
    assert _run(opened, [8, 9, 5]) == [8, 9, None]
    # A drafted row sees the state its drafts would leave.
    drafted = ThinkingBudget.for_prompt(2, TAGS, [1, 2])
    assert [drafted.forced_after([5, 5][:j]) for j in range(3)] == [None, None, 8]
    assert drafted.forced_after([5, 5, 8]) == 9 and drafted.forced() is None  # the state itself is unchanged


def test_a_scripted_thinker_is_cut_at_its_budget(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer(tiny_model_dir)
    start, end = tokenizer.encode("<think>"), tokenizer.encode("</think>")
    thinking = tokenizer.encode(" and so on" * 20)
    runner = ScriptedRunner(start + thinking, tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    engine = LLMEngine(EngineConfig(num_blocks=64, max_model_len=256), runner, tokenizer=tokenizer)
    seq = engine.add_request("r", [5, 6, 7], SamplingParams(max_tokens=40, thinking_token_budget=6))
    while engine.has_unfinished():
        engine.step()
    out = seq.output_token_ids
    assert out[: len(start)] == start and out[len(start): len(start) + 6] == thinking[:6]
    assert out[len(start) + 6: len(start) + 6 + len(end)] == end  # forced over what the script wrote
    assert "</think>" in tokenizer.decode(out) and seq.thinking is not None and seq.thinking.phase == "done"
    with pytest.raises(InvalidRequestError, match="no tokenizer"):
        LLMEngine(EngineConfig(num_blocks=8), CountingRunner()).add_request(
            "x", [1, 2], SamplingParams(thinking_token_budget=1))


@pytest.mark.parametrize("speculative", [False, True])
def test_the_tiny_models_logits_are_masked_to_the_end_tag(tiny_model_dir: Path, speculative: bool) -> None:
    """A prompt that opens the block: after 4 thinking tokens the model writes `</think>` (as many tokens
    as the tokenizer makes of it), greedy and with n-gram drafts alike, each forced token's log-probability
    the model's own."""
    tokenizer = Tokenizer(tiny_model_dir)
    end = tokenizer.encode("</think>")
    prompt = tokenizer.encode("Repeat: the cat sat on the mat, the cat sat on the mat, the cat sat<think>")
    assert prompt[-len(tokenizer.encode("<think>")):] == tokenizer.encode("<think>")
    spec = SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_min=1) if speculative else None
    engine = LLMEngine(EngineConfig(num_blocks=64, max_model_len=256, speculative=spec),
                       TorchModelRunner(tiny_model_dir, 64, 16, device="cpu"), tokenizer=tokenizer)
    params = SamplingParams(max_tokens=4 + len(end) + 3, temperature=0, ignore_eos=True, thinking_token_budget=4,
                            logprobs=0)
    seq = engine.add_request("r", prompt, params)
    chosen = []
    while engine.has_unfinished():
        for output in engine.step():
            chosen += [lp.logprob for lp in output.logprobs or []]
    assert seq.output_token_ids[4: 4 + len(end)] == end
    # Each forced token's log-probability is the model's own for it (finite: it was not the -inf mask's).
    assert len(chosen) == len(seq.output_token_ids) and all(-1e9 < lp <= 0 for lp in chosen)
    free = LLMEngine(EngineConfig(num_blocks=64, max_model_len=256), TorchModelRunner(tiny_model_dir, 64, 16, device="cpu"),
                     tokenizer=tokenizer).add_request("f", prompt, SamplingParams(max_tokens=4, temperature=0))
    assert free.thinking is None


def test_the_chat_api_takes_a_budget_or_an_effort(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer(tiny_model_dir)
    script = tokenizer.encode("<think>\nFirst, the sea. Then the sky.</think>\n\nIt is blue.")
    messages = [{"role": "user", "content": "What color is the sea?"}]

    def served(parser: str | None) -> AsyncEngine:
        runner = ScriptedRunner(script, tokenizer.eos_token_ids[0], tokenizer.vocab_size)
        budgets = {**DEFAULT_EFFORT_BUDGETS, "low": 3}
        return AsyncEngine(LLMEngine(EngineConfig(num_blocks=64, max_model_len=256, reasoning_effort_budgets=budgets),
                                     runner, tokenizer=tokenizer))

    with serve_in_thread(create_app(served("think"), "tiny", "think")) as url, sdk(url) as client:
        free = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64)
        low = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64,
                                             extra_body={"reasoning_effort": "low"})  # this engine's low: 3 tokens
        none = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64,
                                              extra_body={"reasoning_effort": "none"})
        capped = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64,
                                                extra_body={"thinking_token_budget": 2})
        with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
            client.chat.completions.create(model="tiny", messages=messages, extra_body={"reasoning_effort": "max"})
    assert free.choices[0].message.reasoning_content == "\nFirst, the sea. Then the sky."  # type: ignore[attr-defined]
    assert not getattr(none.choices[0].message, "reasoning_content", None)  # closed at once
    assert none.choices[0].message.content
    thinking = tokenizer.encode("\nFirst, the sea. Then the sky.")
    assert capped.choices[0].message.reasoning_content == tokenizer.decode(thinking[:2])  # type: ignore[attr-defined]
    assert low.choices[0].message.reasoning_content == tokenizer.decode(thinking[:3])  # type: ignore[attr-defined]
    with serve_in_thread(create_app(served(None), "tiny", None)) as url, sdk(url) as client:
        ignored = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64,
                                                 extra_body={"reasoning_effort": "low"})
        with pytest.raises(openai.BadRequestError, match="--reasoning-parser"):
            client.chat.completions.create(model="tiny", messages=messages, extra_body={"thinking_token_budget": 2})
    assert ignored.choices[0].message.content.startswith("<think>")


def test_a_responses_api_effort_reaches_the_engine_through_the_gateway(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The Responses API's `reasoning.effort` goes on as the chat's `reasoning_effort` (gateway/responses_api.py),
    which the engine turns into a budget: "none" leaves no reasoning item."""
    from tests.gateway.harness import gateway_config, model_entry, running_gateway

    tokenizer = Tokenizer(tiny_model_dir)
    script = tokenizer.encode("<think>\nFirst, the sea.</think>\n\nIt is blue.")
    runner = ScriptedRunner(script, tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    engine = AsyncEngine(LLMEngine(EngineConfig(num_blocks=64, max_model_len=256), runner, tokenizer=tokenizer))
    with serve_in_thread(create_app(engine, "thinker", "think")) as url, \
            running_gateway(gateway_config(tmp_path, [model_entry("thinker", f"{url}/v1")])) as gw, \
            gw.openai() as client:
        thought = client.responses.create(model="thinker", input="What color is the sea?")
        hasty = client.responses.create(model="thinker", input="What color is the sea?", reasoning={"effort": "none"})
    assert [item.type for item in thought.output] == ["reasoning", "message"]
    assert [item.type for item in hasty.output] == ["message"]


def test_effort_budgets_are_checked_where_they_are_set() -> None:
    import argparse

    from engine.cli_values import effort_budgets

    assert effort_budgets('{"low": 512, "none": 0}') == {"low": 512, "none": 0}
    for bad in ('{"extreme": 1}', '{"low": -1}', '[1]', "low=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            effort_budgets(bad)
    with pytest.raises(ValueError, match="reasoning_effort_budgets"):
        EngineConfig(reasoning_effort_budgets={"low": 1})
