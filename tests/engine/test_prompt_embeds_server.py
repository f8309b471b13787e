"""prompt_embeds on `pitstop engine serve --enable-prompt-embeds`, over a real socket with the openai SDK's
extra_body: the embeddings of a prompt's ids answer as the ids do (text, logprobs, usage counting the rows),
with n > 1 and streamed, beside text prompts in one request (the embeddings' choices first), truncated by
truncate_prompt_tokens; every malformed payload, echo, and a server without the flag: a 400 in OpenAI's shape."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.engine.serving import engine_server, sdk

MODEL = "tiny"
IDS = [17, 203, 5, 999, 42, 8, 311, 77, 64, 130, 2, 901]
SENTINEL = Path("/tmp/pitstop-prompt-embeds-unpickled")  # what the pickled call would create, were it run


def b64(value: object) -> str:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


@cache
def embedding_weight(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).get_input_embeddings().weight.detach()


@pytest.fixture(scope="module")
def rows(tiny_model_dir: Path) -> torch.Tensor:
    return embedding_weight(tiny_model_dir)[IDS]


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL, enable_prompt_embeds=True) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return sdk(url)


def complete(client: openai.OpenAI, prompt: object, **extra: object) -> openai.types.Completion:
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0.0, logprobs=2,  # type: ignore[arg-type]
                                     extra_body={"ignore_eos": True, **extra})


def test_embeddings_answer_as_their_ids(client: openai.OpenAI, rows: torch.Tensor) -> None:
    by_ids = complete(client, IDS)
    by_embeds = complete(client, "", prompt_embeds=b64(rows))
    assert by_embeds.choices[0].text == by_ids.choices[0].text
    assert by_embeds.choices[0].logprobs == by_ids.choices[0].logprobs
    assert by_embeds.usage is not None and by_embeds.usage.prompt_tokens == len(IDS)
    assert by_embeds.usage.completion_tokens == 6


def test_n_samples_streamed_and_a_list_with_a_text_prompt(client: openai.OpenAI, rows: torch.Tensor) -> None:
    """n=2 streamed: both choices greedy; embeddings and a prompt in one request: the embeddings' choices
    first (vLLM's order), a bfloat16 batch of one [1, n, hidden] accepted as its float32 rows."""
    expected = complete(client, IDS).choices[0].text
    texts = ["", ""]
    stream = client.completions.create(model=MODEL, prompt="", max_tokens=6, temperature=0.0, n=2, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True, "prompt_embeds": b64(rows)})
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
        usage = chunk.usage or usage
    assert texts == [expected, expected]
    assert usage is not None and usage.prompt_tokens == len(IDS)
    other = [3, 4, 5, 6, 7]
    mixed = complete(client, other, prompt_embeds=[b64(rows), b64(rows[None].to(torch.bfloat16))])
    assert [c.index for c in mixed.choices] == [0, 1, 2]
    assert mixed.choices[0].text == expected
    assert mixed.choices[1].text == complete(client, "", prompt_embeds=b64(rows.to(torch.bfloat16))).choices[0].text
    assert mixed.choices[2].text == complete(client, other).choices[0].text


def test_truncate_prompt_tokens_keeps_the_last_rows(client: openai.OpenAI, rows: torch.Tensor) -> None:
    cut = complete(client, "", prompt_embeds=b64(rows), truncate_prompt_tokens=5)
    assert cut.choices[0].text == complete(client, IDS[-5:]).choices[0].text
    assert cut.usage is not None and cut.usage.prompt_tokens == 5


def _bad_payloads(hidden: int) -> dict[str, object]:
    nan = torch.zeros(3, hidden)
    nan[1, 2] = float("nan")
    return {
        "not base64": "%%%not-base64%%%",
        "not torch.save": base64.b64encode(b"just some bytes").decode(),
        "a dict, not a tensor": b64({"rows": torch.zeros(2, hidden)}),
        "integers": b64(torch.zeros(3, hidden, dtype=torch.int64)),
        "float64": b64(torch.zeros(3, hidden, dtype=torch.float64)),
        "wrong hidden size": b64(torch.zeros(3, hidden + 1)),
        "one dimension": b64(torch.zeros(hidden)),
        "a batch of two": b64(torch.zeros(2, 3, hidden)),
        "no rows": b64(torch.zeros(0, hidden)),
        "past the context": b64(torch.zeros(512, hidden)),
        # One stored row seen as a million by zero strides: refused by its shape, never copied out.
        "zero strides": b64(torch.zeros(1, hidden).expand(1_000_000, hidden)),
        "NaN": b64(nan),
        "infinity": b64(torch.full((2, hidden), float("inf"))),
        "sparse": b64(torch.zeros(3, hidden).to_sparse()),
        "a pickled call": base64.b64encode(f"cos\nsystem\n(S'touch {SENTINEL}'\ntR.".encode()).decode(),
        "an empty list": [],
        "a number": 7,
    }


@pytest.mark.parametrize("case", list(_bad_payloads(64)))
def test_every_malformed_payload_is_a_400(url: str, tiny_model_dir: Path, case: str) -> None:
    hidden = embedding_weight(tiny_model_dir).shape[1]
    body = {"model": MODEL, "prompt": "", "max_tokens": 2, "prompt_embeds": _bad_payloads(hidden)[case]}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, (case, response.text)
    assert response.json()["error"]["param"] == "prompt_embeds", case
    assert not SENTINEL.exists()  # torch.load(weights_only=True) ran no pickled call


def test_echo_and_chat_are_refused(client: openai.OpenAI, rows: torch.Tensor) -> None:
    with pytest.raises(openai.BadRequestError) as echo:
        client.completions.create(model=MODEL, prompt="", max_tokens=2, echo=True, logprobs=1,
                                  extra_body={"prompt_embeds": b64(rows)})
    assert "echo" in echo.value.message
    with pytest.raises(openai.BadRequestError):  # a chat has no prompt to stand in for
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"prompt_embeds": b64(rows)})


def test_a_server_without_the_flag_refuses_them(tiny_model_dir: Path, rows: torch.Tensor) -> None:
    with engine_server(tiny_model_dir, MODEL) as base, pytest.raises(openai.BadRequestError) as refused:
        complete(sdk(base), "", prompt_embeds=b64(rows))
    assert "--enable-prompt-embeds" in refused.value.message
