"""Echo, prompt scoring and sampling controls over a real socket with the openai SDK, on the tiny model:
the loglikelihood requests lm-evaluation-harness sends (`echo`, `logprobs`, `max_tokens` 1 or 0) read
as it reads them and checked against transformers, echo whole and streamed, and the penalties,
logit_bias, top_k and min_tokens fields as clients send them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from engine.tokenizer import Tokenizer
from tests.engine.serving import engine_server, sdk

MODEL = "tiny"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[openai.OpenAI]:
    with engine_server(tiny_model_dir, MODEL, max_num_seqs=8) as url:
        yield sdk(url)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


def reference_loglikelihood(model_dir: Path, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """transformers' log-probability of the continuation after the context, and whether it is greedy."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = context + continuation
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([tokens])).logits[0], dim=-1)
    rows = logprobs[len(context) - 1:len(tokens) - 1]
    chosen = rows[torch.arange(len(continuation)), torch.tensor(continuation)]
    return chosen.sum().item(), rows.argmax(dim=-1).tolist() == continuation


def lm_eval_parse(choice, ctxlen: int, drop_last: bool) -> tuple[float, bool]:  # noqa: ANN001
    """lm-evaluation-harness's reading of a local-completions answer (its parse_logprobs)."""
    end = -1 if drop_last else None
    token_logprobs = choice.logprobs.token_logprobs[ctxlen:end]
    top = choice.logprobs.top_logprobs[ctxlen:end]
    return sum(token_logprobs), all(lp == max(t.values()) for lp, t in zip(token_logprobs, top, strict=True))


@pytest.mark.parametrize("max_tokens", [1, 0])
def test_loglikelihood_as_lm_eval_asks_for_it(client: openai.OpenAI, tokenizer: Tokenizer, tiny_model_dir: Path,
                                              max_tokens: int) -> None:
    context = tokenizer.encode("Question: what is the colour of the sky? Answer:")
    for text in (" blue", " the colour of the deep sea at night"):
        continuation = tokenizer.encode(text)
        answer = client.completions.create(model=MODEL, prompt=context + continuation, echo=True, logprobs=1,
                                           max_tokens=max_tokens, temperature=0, seed=1234)
        choice = answer.choices[0]
        total = len(context) + len(continuation)
        assert len(choice.logprobs.tokens) == total + max_tokens
        assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
        assert answer.usage.prompt_tokens == total and answer.usage.completion_tokens == max_tokens
        found = lm_eval_parse(choice, len(context), drop_last=max_tokens == 1)
        expected = reference_loglikelihood(tiny_model_dir, context, continuation)
        assert found[0] == pytest.approx(expected[0], abs=1e-3) and found[1] == expected[1]
        if max_tokens == 0:
            assert choice.text == tokenizer.decode(context + continuation, skip_special_tokens=False)
            assert choice.finish_reason == "length"


def test_echo_puts_the_prompt_before_the_answer_whole_and_streamed(client: openai.OpenAI) -> None:
    ask = {"model": MODEL, "prompt": "The sea was calm", "max_tokens": 5, "temperature": 0,
           "extra_body": {"ignore_eos": True}}
    plain = client.completions.create(**ask).choices[0]
    echoed = client.completions.create(**ask, echo=True).choices[0]
    assert echoed.text == "The sea was calm" + plain.text and echoed.logprobs is None
    scored = client.completions.create(**ask, echo=True, logprobs=2).choices[0]
    assert scored.text == echoed.text
    offsets, tokens = scored.logprobs.text_offset, scored.logprobs.tokens
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert "".join(tokens[-5:]) == plain.text
    chunks = list(client.completions.create(**ask, echo=True, logprobs=2, stream=True))
    assert chunks[0].choices[0].text == "The sea was calm"
    assert "".join(c.choices[0].text for c in chunks) == scored.text
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed == tokens
    assert chunks[-1].choices[0].finish_reason == "length"


def test_every_choice_echoes_its_prompt(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=MODEL, prompt="Once", max_tokens=3, n=2, temperature=1.0, seed=4,
                                       echo=True, logprobs=0, extra_body={"ignore_eos": True})
    first, second = answer.choices
    assert first.text.startswith("Once") and second.text.startswith("Once") and first.text != second.text
    prompt_tokens = len(first.logprobs.tokens) - 3
    assert first.logprobs.token_logprobs[0] is second.logprobs.token_logprobs[0] is None
    assert first.logprobs.token_logprobs[1:prompt_tokens] == pytest.approx(second.logprobs.token_logprobs[1:prompt_tokens],
                                                                             abs=1e-4)  # each choice scores it
    assert answer.usage.completion_tokens == 6


def test_sampling_controls_as_clients_send_them(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    base = {"model": MODEL, "prompt": "Write a story", "max_tokens": 6}
    token = tokenizer.encode(" ocean")[0]
    forced = client.completions.create(**base, temperature=0, logit_bias={str(token): 100},
                                       extra_body={"ignore_eos": True})
    assert forced.choices[0].text == tokenizer.decode([token] * 6)
    greedy = client.completions.create(**base, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    top_one = client.completions.create(**base, temperature=1.5, extra_body={"ignore_eos": True, "top_k": 1})
    assert top_one.choices[0].text == greedy
    favoured = {"temperature": 0, "logit_bias": {str(token): 8}, "logprobs": 0, "extra_body": {"ignore_eos": True}}
    word = tokenizer.decode([token])
    unpenalized = client.completions.create(**base, **favoured).choices[0].logprobs.tokens
    penalized = client.completions.create(**base, **favoured, frequency_penalty=2.0, presence_penalty=2.0)
    assert 0 < penalized.choices[0].logprobs.tokens.count(word) < unpenalized.count(word)
    eos = tokenizer.eos_token_ids[0]
    for max_tokens in (8, None):  # None: the rest of the context
        held = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              temperature=0, max_tokens=max_tokens, logit_bias={str(eos): 100},
                                              extra_body={"min_tokens": 3})
        assert held.usage.completion_tokens == 4 and held.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("fields", "param"), [
    ({"logit_bias": {"1024": 1}}, "logit_bias"),  # the tiny vocabulary has 1024 tokens
    ({"max_tokens": 0}, "max_tokens"),  # generating nothing is only for echo
    ({"echo": True, "logprobs": 21}, "logprobs"),
])
def test_bad_scoring_requests_are_400s(client: openai.OpenAI, fields: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="x", **fields)
    assert raised.value.body["param"] == param


def test_a_batch_of_prompts_answers_each_as_alone(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    """OpenAI's batch: choices indexed prompt by prompt (k * n + j), each as its prompt alone would get
    it, the usage adding every prompt once; whole and streamed."""
    prompts = ["The sea was calm", "A long time ago, in a town by the river,"]
    ask = {"model": MODEL, "max_tokens": 4, "temperature": 1.0, "seed": 9, "n": 2, "extra_body": {"ignore_eos": True}}
    alone = [client.completions.create(prompt=p, **ask) for p in prompts]
    batch = client.completions.create(prompt=prompts, **ask)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [c.text for a in alone for c in a.choices]
    assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert batch.usage.completion_tokens == 16
    chunks = list(client.completions.create(prompt=prompts, stream=True, stream_options={"include_usage": True}, **ask))
    streamed = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(4)]
    assert streamed == [c.text for c in batch.choices] and chunks[-1].usage == batch.usage


def test_lm_eval_scores_a_batch_of_token_lists(client: openai.OpenAI, tokenizer: Tokenizer,
                                               tiny_model_dir: Path) -> None:
    context = tokenizer.encode("Which is heavier, a kilogram of feathers or of lead? Answer:")
    options = [tokenizer.encode(text) for text in (" feathers", " lead", " neither: they weigh the same")]
    answer = client.completions.create(model=MODEL, prompt=[context + o for o in options], echo=True, logprobs=1,
                                       max_tokens=1, temperature=0, seed=1234)
    assert len(answer.choices) == 3
    for choice, option in zip(sorted(answer.choices, key=lambda c: c.index), options, strict=True):
        found = lm_eval_parse(choice, len(context), drop_last=True)
        expected = reference_loglikelihood(tiny_model_dir, context, option)
        assert found[0] == pytest.approx(expected[0], abs=1e-3) and found[1] == expected[1]
