"""vLLM's `allowed_token_ids` and `bad_words` (engine/banned_tokens.py): the bad-word tokenization rule
and the matching against the answer so far, on the engine (greedy and sampled, with n-gram drafts
checked against them), over a real socket with the openai SDK's extra_body, and their 400s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from engine.banned_tokens import bad_words_token_ids, banned_next
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.sequence import Sequence
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_server, sdk
from tests.engine.test_torch_runner import make_prompts

MODEL = "tiny"


class WordEncoder:
    """A tokenizer whose tokens are words, a leading space making a word's other token (as BPE's Ġ)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        pieces = text.split(" ")
        words = [("" if k == 0 else "Ġ") + w for k, w in enumerate(pieces) if w or k == 0]
        return [self.ids.setdefault(w, len(self.ids)) for w in words if w and w != "Ġ"] if text else []


def test_a_bad_word_is_banned_as_it_starts_the_text_and_after_a_space() -> None:
    encoder = WordEncoder()
    words = bad_words_token_ids(["hello", " new york"], encoder)
    hello, spaced_hello = encoder.ids["hello"], encoder.ids["Ġhello"]
    new, york, spaced_new = encoder.ids["new"], encoder.ids["Ġyork"], encoder.ids["Ġnew"]
    assert words == ((hello,), (spaced_hello,), (new, york), (spaced_new, york))
    assert sorted(banned_next(words, [])) == sorted([hello, spaced_hello])  # one-token words: always
    assert york in banned_next(words, [7, new]) and york in banned_next(words, [spaced_new])
    assert york not in banned_next(words, [new, 7])  # the rest of the word must end the answer so far


def make_engine(model_dir: Path, **config: object) -> LLMEngine:
    runner = TorchModelRunner(model_dir, 256, 4, dtype=torch.float32)
    return LLMEngine(EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=64, max_num_seqs=8,
                                  **config), runner, tokenizer=Tokenizer(model_dir))


def generate(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, Sequence]:
    seqs = {rid: engine.add_request(rid, prompt, params) for rid, (prompt, params) in requests.items()}
    while engine.has_unfinished():
        engine.step()
    return seqs


@pytest.mark.parametrize("speculative", [False, True])
def test_only_allowed_tokens_are_sampled(tiny_model_dir: Path, speculative: bool) -> None:
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompts = make_prompts([6, 9, 12], vocab, seed=21)
    plain = generate(make_engine(tiny_model_dir), {"p": (prompts[0], SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True))})["p"].output_token_ids
    allowed = tuple(sorted({*range(40, 48), (plain[0] + 1) % vocab} - {plain[0]}))
    config = {"speculative": SpeculativeConfig(num_speculative_tokens=3)} if speculative else {}
    asks = {f"{kind}{k}": (prompt, SamplingParams(temperature=temperature, seed=k, max_tokens=12, ignore_eos=True,
                                                  allowed_token_ids=allowed))
            for k, prompt in enumerate(prompts) for kind, temperature in (("greedy", 0.0), ("sampled", 1.0))}
    seqs = generate(make_engine(tiny_model_dir, **config), asks)
    for rid, seq in seqs.items():
        assert len(seq.output_token_ids) == 12 and set(seq.output_token_ids) <= set(allowed), rid
    assert seqs["greedy0"].output_token_ids[0] != plain[0]


def test_bad_words_are_never_completed(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer(tiny_model_dir)
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompts = make_prompts([5, 8, 11, 14], vocab, seed=5)
    engine = make_engine(tiny_model_dir)
    plain = generate(engine, {f"p{k}": (p, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
                              for k, p in enumerate(prompts)})
    # Words the model says when left alone: a one-token one and a two-token one from each answer.
    words = [tokenizer.decode(plain[f"p{k}"].output_token_ids[2:4]) for k in range(len(prompts))]
    words += [tokenizer.decode(plain["p0"].output_token_ids[6:7])]
    words = [w for w in words if w.strip()]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, bad_words=tuple(words))
    banned = generate(engine, {f"b{k}": (p, params) for k, p in enumerate(prompts)})
    sequences = bad_words_token_ids(words, tokenizer)
    assert sequences, words
    for k in range(len(prompts)):
        output = banned[f"b{k}"].output_token_ids
        for end in range(len(output)):
            assert output[end] not in banned_next(sequences, output[:end]), (k, end)
    assert any(banned[f"b{k}"].output_token_ids != plain[f"p{k}"].output_token_ids for k in range(len(prompts)))


def test_the_engine_checks_the_token_ids_and_needs_a_tokenizer_for_words(tiny_model_dir: Path) -> None:
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    runner = TorchModelRunner(tiny_model_dir, 64, 4, dtype=torch.float32)
    engine = LLMEngine(EngineConfig(block_size=4, num_blocks=64), runner)  # no tokenizer
    with pytest.raises(InvalidRequestError, match="tokenizer") as raised:
        engine.validate_request([1, 2], params=SamplingParams(bad_words=("no",)))
    assert raised.value.param == "bad_words"
    with pytest.raises(InvalidRequestError) as raised:
        engine.validate_request([1, 2], vocab_size=vocab, params=SamplingParams(allowed_token_ids=(1, vocab)))
    assert raised.value.param == "allowed_token_ids"
    for bad, param in (({"allowed_token_ids": ()}, "allowed_token_ids"), ({"allowed_token_ids": (-1,)},
                       "allowed_token_ids"), ({"bad_words": (" ",)}, "bad_words")):
        with pytest.raises(InvalidRequestError) as raised:
            SamplingParams(**bad)
        assert raised.value.param == param


def test_masks_that_leave_nothing_to_sample_are_refused(tiny_model_dir: Path) -> None:
    engine = make_engine(tiny_model_dir)
    eos = engine.runner.eos_token_ids
    word = "the"
    one_token = [ids[0] for ids in bad_words_token_ids([word], Tokenizer(tiny_model_dir)) if len(ids) == 1]
    assert one_token, "the tiny tokenizer has 'the' as one token"
    refused = [SamplingParams(allowed_token_ids=eos, min_tokens=2),
               SamplingParams(allowed_token_ids=(*eos, 40), stop_token_ids=(40,), min_tokens=1),
               SamplingParams(allowed_token_ids=tuple(one_token), bad_words=(word,)),
               SamplingParams(allowed_token_ids=(*eos, *one_token), bad_words=(word,), min_tokens=1)]
    for params in refused:
        with pytest.raises(InvalidRequestError, match="allowed_token_ids") as raised:
            engine.add_request("r", [1, 2, 3], params)
        assert raised.value.param == "allowed_token_ids", params
    for params in (SamplingParams(allowed_token_ids=eos, min_tokens=2, ignore_eos=True, max_tokens=3),
                   SamplingParams(allowed_token_ids=(*eos, 40), min_tokens=2, max_tokens=3)):
        seq = generate(engine, {"ok": ([1, 2, 3], params)})["ok"]
        assert set(seq.output_token_ids) <= set(params.allowed_token_ids)
        assert len(seq.output_token_ids) >= 2


def test_a_row_whose_bad_words_ban_every_allowed_token_keeps_to_the_allowed_ones() -> None:
    """After token 3, the bad words "3 3" and "3 5" ban both allowed tokens: the row then samples from its
    allowed tokens, never from a row of -inf (which draws token 0, outside allowed_token_ids)."""
    from engine.model.logits_processors import process_logits

    class Row:
        def __init__(self, params: SamplingParams, token_ids: list[int]) -> None:
            self.params, self.token_ids, self.num_prompt_tokens = params, token_ids, 2

    params = SamplingParams(allowed_token_ids=(3, 5), bad_words_token_ids=((3, 3), (3, 5)), ignore_eos=True)
    logits = torch.randn(3, 16)
    rows = [Row(params, [9, 9]), Row(params, [9, 9, 3]), Row(SamplingParams(), [9, 9])]
    out = process_logits(logits, rows, eos_token_ids=(0,))
    for i in (0, 1):
        assert set(torch.isfinite(out[i]).nonzero().flatten().tolist()) == {3, 5}, i
        assert int(out[i].argmax()) in {3, 5}
    assert torch.equal(out[1, [3, 5]], logits[1, [3, 5]])  # the fallback: what allowed_token_ids left
    assert torch.equal(out[2], logits[2])


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL) as base:
        yield base


def test_the_fields_over_http(url: str, tiny_model_dir: Path) -> None:
    client: openai.OpenAI = sdk(url)
    tokenizer = Tokenizer(tiny_model_dir)

    def completion(**extra: object) -> openai.types.Completion:
        return client.completions.create(model=MODEL, prompt="The cat", max_tokens=8, temperature=0, logprobs=0,
                                         extra_body={"ignore_eos": True, **extra})

    allowed = tokenizer.encode(" the")[:1] + tokenizer.encode(" a")[:1]
    text = completion(allowed_token_ids=allowed).choices[0].text
    assert text.strip() and set(tokenizer.encode(text)) <= set(allowed)
    plain = completion().choices[0].text
    word = plain[: len(plain) - len(plain.lstrip())] + plain.split()[0]  # the answer's first word
    first_tokens = {ids[0] for ids in bad_words_token_ids([word], tokenizer) if len(ids) == 1}
    assert tokenizer.encode(plain)[0] in first_tokens or not first_tokens
    without = completion(bad_words=[word]).choices[0].text
    assert without.split()[0] != word.strip()
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "The cat"}],
                                          max_tokens=4, temperature=0, extra_body={"bad_words": [word]})
    assert chat.choices[0].finish_reason in {"stop", "length"}


@pytest.mark.parametrize(("extra", "param"), [
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [1, "2"]}, "allowed_token_ids"),
    ({"allowed_token_ids": [10**9]}, "allowed_token_ids"),
    ({"bad_words": "cat"}, "bad_words"),
    ({"bad_words": [""]}, "bad_words"),
    ({"bad_words": ["cat"], "response_format": {"type": "json_object"}}, "bad_words"),
    ({"allowed_token_ids": [1], "structured_outputs": {"regex": "a+"}}, "allowed_token_ids"),
    ({"allowed_token_ids": [40], "stop_token_ids": [40], "min_tokens": 1}, "allowed_token_ids"),
])
def test_bad_values_are_400s(url: str, extra: dict, param: str) -> None:
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | extra
    response = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
