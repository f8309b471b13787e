"""vLLM's `use_beam_search` on the served engine, through the openai SDK over a real socket: a completion's
and a chat's choices are transformers' beams for the same prompt tokens, best first, whole and streamed (one
chunk a choice, then the usage); a stop token id that is every beam's likeliest first token ends the best
beam at once; a batch of prompts gets each its own beams; and every field the search would not honour is a
400 naming it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.build import build_engine
from engine.server.app import create_app
from engine.step_time import LinearStepTime, save_profile
from engine.tokenizer import Tokenizer
from tests.engine.serving import engine_server, sdk, serve_in_thread
from tests.engine.test_beam_search import transformers_beams
from tests.gateway.harness import gateway_config, running_gateway

MODEL = "tiny-beams"
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[openai.OpenAI]:
    with engine_server(tiny_model_dir, MODEL, max_num_seqs=16) as url, sdk(url) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


def expected_texts(model_dir: Path, tokenizer: Tokenizer, prompt: list[int], width: int, steps: int) -> list[str]:
    beams, _ = transformers_beams(model_dir, prompt, width, steps, length_penalty=1.0)
    return [tokenizer.decode(beam) for beam in beams]


def test_a_completion_returns_transformers_beams_best_first(client: openai.OpenAI, tokenizer: Tokenizer,
                                                            tiny_model_dir: Path) -> None:
    answer = client.completions.create(model=MODEL, prompt=PROMPT, n=3, max_tokens=6,
                                       extra_body={"use_beam_search": True, "ignore_eos": True})
    expected = expected_texts(tiny_model_dir, tokenizer, tokenizer.encode(PROMPT), 3, 6)
    assert [c.text for c in answer.choices] == expected
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert {c.finish_reason for c in answer.choices} == {"length"}
    assert answer.usage is not None and answer.usage.completion_tokens == 18
    assert answer.usage.prompt_tokens == len(tokenizer.encode(PROMPT))


def test_a_streamed_chat_sends_the_same_beams_a_chunk_each(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    kwargs = {"model": MODEL, "messages": messages, "n": 2, "max_tokens": 5,
              "extra_body": {"use_beam_search": True, "ignore_eos": True, "length_penalty": 0.5}}
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert whole.choices[0].message.content != whole.choices[1].message.content


def test_each_beam_comes_with_its_tokens_log_probabilities(client: openai.OpenAI, tokenizer: Tokenizer,
                                                           tiny_model_dir: Path) -> None:
    """A completion's `logprobs` k and a chat's `logprobs` with `top_logprobs`: every beam's tokens, each with its
    log-probability (summing to transformers' score for the beam) and k alternatives, whole and streamed."""
    answer = client.completions.create(model=MODEL, prompt=PROMPT, n=2, max_tokens=5, logprobs=3,
                                       extra_body={"use_beam_search": True, "ignore_eos": True})
    _, scores = transformers_beams(tiny_model_dir, tokenizer.encode(PROMPT), 2, 5, length_penalty=1.0)
    for choice, score in zip(answer.choices, scores, strict=True):
        logprobs = choice.logprobs
        assert logprobs is not None and "".join(logprobs.tokens or []) == choice.text
        assert sum(logprobs.token_logprobs or []) == pytest.approx(score * 5, abs=1e-3)
        assert all(len(top) == 3 for top in logprobs.top_logprobs or [])
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "n": 2, "max_tokens": 4,
              "logprobs": True, "top_logprobs": 2, "extra_body": {"use_beam_search": True, "ignore_eos": True}}
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    streamed = {c.index: c.logprobs for chunk in client.chat.completions.create(**kwargs, stream=True)
                for c in chunk.choices if c.logprobs is not None}
    for choice in whole.choices:
        content = choice.logprobs.content
        assert len(content) == 4 and "".join(e.token for e in content) == choice.message.content
        assert all(len(e.top_logprobs) == 2 and e.logprob <= e.top_logprobs[0].logprob + 1e-6 for e in content)
        assert streamed[choice.index].content == content


def test_a_stop_token_id_ends_the_beam_whose_first_token_it_is(client: openai.OpenAI) -> None:
    """The likeliest first token ends a beam with the best summed log-probability there can be, so with no
    length penalty that empty answer ranks first."""
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0,
                                      extra_body={"return_token_ids": True})
    first = plain.choices[0].token_ids[0]  # type: ignore[attr-defined]
    answer = client.completions.create(model=MODEL, prompt=PROMPT, n=2, max_tokens=4, extra_body={
        "use_beam_search": True, "stop_token_ids": [first], "length_penalty": 0.0})
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("", "stop")
    assert answer.choices[1].text != ""


def test_a_batch_of_prompts_gets_each_its_own_beams(client: openai.OpenAI, tokenizer: Tokenizer,
                                                   tiny_model_dir: Path) -> None:
    prompts = [PROMPT, "Once upon a time"]
    answer = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=4,
                                       extra_body={"use_beam_search": True, "ignore_eos": True})
    expected = [text for p in prompts for text in expected_texts(tiny_model_dir, tokenizer, tokenizer.encode(p), 2, 4)]
    assert [c.text for c in answer.choices] == expected


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 11}, "n"), ({"min_tokens": 2}, "min_tokens"), ({"stop": ["\n"]}, "stop"), ({"top_p": 0.5}, "top_p"),
    ({"echo": True}, "echo"), ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format")])
def test_fields_beam_search_does_not_honour_are_refused(client: openai.OpenAI, extra: dict, param: str) -> None:
    body = {"use_beam_search": True, **{k: v for k, v in extra.items() if k != "n"}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt=PROMPT, n=extra.get("n", 2), max_tokens=4, extra_body=body)
    assert refused.value.body["param"] == param  # type: ignore[index]


def test_a_length_penalty_without_beam_search_and_tools_with_it_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"length_penalty": 2.0})
    assert refused.value.body["param"] == "length_penalty"  # type: ignore[index]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[tool],  # type: ignore[list-item]
                                       max_tokens=4, extra_body={"use_beam_search": True})
    assert refused.value.body["param"] == "tools"  # type: ignore[index]


def test_the_gateway_runs_a_beam_search_on_an_in_process_engine(tiny_model_dir: Path, tmp_path: Path,
                                                                 tokenizer: Tokenizer) -> None:
    models = [{"model_name": "local", "litellm_params": {"model": "pitstop-local/local",
                                                         "model_dir": str(tiny_model_dir), "num_blocks": 64}}]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answer = client.completions.create(model="local", prompt=PROMPT, n=2, max_tokens=4,
                                           extra_body={"use_beam_search": True, "ignore_eos": True})
        streamed = list(client.completions.create(model="local", prompt=PROMPT, n=2, max_tokens=4, stream=True,
                                                  extra_body={"use_beam_search": True, "ignore_eos": True}))
    expected = expected_texts(tiny_model_dir, tokenizer, tokenizer.encode(PROMPT), 2, 4)
    assert [c.text for c in answer.choices] == expected
    texts = {c.index: c.text for chunk in streamed for c in chunk.choices}
    assert [texts[0], texts[1]] == expected


def _settled(url: str) -> dict:
    """The engine's stats once it has no request and its token count held still for 0.3 s: a beam search
    leaves the engine empty between its steps for a moment, so idle once is not idle."""
    last: dict | None = None
    for _ in range(200):
        stats = httpx.get(f"{url}/v1/engine/stats").json()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and last is not None \
                and stats["generation_tokens"] == last["generation_tokens"]:
            return stats
        last = stats
        time.sleep(0.3)
    raise AssertionError(f"the engine still generates: {last}")


def test_a_client_leaving_stops_the_search_and_a_dead_engine_is_a_503(tiny_model_dir: Path) -> None:
    engine = build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512)
    body = {"model": MODEL, "prompt": PROMPT, "n": 4, "max_tokens": 400, "use_beam_search": True, "ignore_eos": True}
    with serve_in_thread(create_app(engine, MODEL)) as url:
        before = _settled(url)["generation_tokens"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
        # The whole search: one request for the prompt, then 4 beams for each of 399 more steps.
        assert _settled(url)["generation_tokens"] - before < 1 + 399 * 4
        runner, steps = engine.engine.runner, {"left": 3}
        execute = runner.execute

        def dying(batch: object) -> object:
            steps["left"] -= 1
            if steps["left"] < 0:
                raise RuntimeError("device lost")
            return execute(batch)

        runner.execute = dying  # type: ignore[method-assign]
        response = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 20}, timeout=30)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "engine_unavailable"


def test_a_simulated_engine_refuses_beam_search(tmp_path: Path) -> None:
    profile = tmp_path / "linear.json"
    save_profile(profile, LinearStepTime(c0=1e-3, c_prefill_token=0.0, c_prefill_seq=0.0, c_attn=0.0,
                                         c_decode_seq=0.0, c_kv_token=0.0))
    engine = build_engine(sim_profile=profile, num_blocks=64, max_model_len=512)
    with serve_in_thread(create_app(engine, MODEL)) as url:
        response = httpx.post(f"{url}/v1/completions", timeout=30, json={
            "model": MODEL, "prompt": [1, 2, 3], "n": 2, "max_tokens": 4, "use_beam_search": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "use_beam_search"
