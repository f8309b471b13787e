"""`client.responses.input_tokens.count` and Anthropic's `messages.count_tokens` through the gateway,
over a real socket with the SDKs: counted by the deployment the request would be served by where it
can count, so the count is what the turn is then billed, for a model on the in-process engine and for
one on a `pitstop engine serve` server (vLLM's /tokenize); OpenAI's models through litellm with their
tiktoken encoding; estimated for an upstream that cannot count; a route group counts on the model it
routes to. Each answer says how its number was had (`x-pitstop-token-count`)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from engine.tiny_model import make_tiny_model
from tests.engine.serving import engine_server
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.upstream import UpstreamProcess

TOOL = {"type": "function", "name": "lookup", "description": "Look a word up in the dictionary.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("token_counts")
    model_dir = make_tiny_model(root / "tiny")
    mock = upstream_processes[0].api_base
    with engine_server(model_dir, "remote") as engine_url:
        models = [
            {"model_name": "tiny", "litellm_params": {"model": "pitstop-local/tiny", "model_dir": str(model_dir),
                                                      "num_blocks": 256, "max_model_len": 512}},
            model_entry("remote", f"{engine_url}/v1"),
            model_entry("up", mock),
            model_entry("gpt-4o", mock, provider="openai", api_key="unused"),
        ]
        groups = [{"name": "grp", "models": ["tiny", "remote"]}]
        with running_gateway(gateway_config(root, models, groups)) as gateway:
            yield gateway


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("model", ["tiny", "remote"])
def test_a_count_on_pitstops_engine_is_what_the_turn_is_billed(gw: Gateway, model: str) -> None:
    """After a chain, with a tool: the count for the next turn is the input tokens that turn is billed."""
    with gw.openai() as client:
        first = client.responses.create(model=model, input="Define the word 'gateway'.", max_output_tokens=4,
                                        instructions="Answer in one line.")
        ask = {"model": model, "input": "And 'router'?", "previous_response_id": first.id, "tools": [TOOL],
               "instructions": "Answer in one line."}
        counted = client.responses.input_tokens.with_raw_response.count(**ask)  # type: ignore[arg-type]
        then = client.responses.create(**ask, max_output_tokens=4)  # type: ignore[arg-type]
    assert then.usage is not None and counted.parse().input_tokens == then.usage.input_tokens
    assert counted.headers["x-pitstop-token-count"] == "counted"
    assert counted.headers["x-pitstop-deployment"] == f"{model}#0"


def test_messages_count_tokens_on_the_engine_is_what_the_message_is_billed(gw: Gateway) -> None:
    """Anthropic's input tokens leave out those read from the cache: the count is both together."""
    ask = {"model": "tiny", "system": "Be brief.", "messages": [
        {"role": "user", "content": "What is a KV cache?"}, {"role": "assistant", "content": "A store."},
        {"role": "user", "content": "Of what?"}]}
    counted = claude(gw).messages.with_raw_response.count_tokens(**ask)  # type: ignore[arg-type]
    answer = claude(gw).messages.create(**ask, max_tokens=3)  # type: ignore[arg-type]
    usage = answer.usage
    assert counted.parse().input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert counted.headers["x-pitstop-token-count"] == "counted"


def test_openais_models_are_counted_with_their_tiktoken_encoding(gw: Gateway) -> None:
    """gpt-4o through litellm: o200k_base, and OpenAI's framing (3 tokens a message and 3 to prime the
    reply), counted here with tiktoken itself."""
    from gateway.backends.litellm_backend import _litellm

    _litellm()  # offline, and tiktoken pointed at the encodings litellm ships
    import tiktoken

    text = "Schreiben Sie eine Erklärung über Quantenverschränkung. 日本語も。"
    with gw.openai() as client:
        counted = client.responses.input_tokens.with_raw_response.count(model="gpt-4o", input=text)
    o200k = tiktoken.get_encoding("o200k_base")
    assert counted.parse().input_tokens == 3 + len(o200k.encode("user")) + len(o200k.encode(text)) + 3
    assert len(o200k.encode(text)) != len(tiktoken.get_encoding("cl100k_base").encode(text))  # the encoding matters
    assert counted.headers["x-pitstop-token-count"] == "counted"


def test_an_upstream_that_cannot_count_gets_the_estimate(gw: Gateway) -> None:
    text = "x" * 400
    with gw.openai() as client:
        first = client.responses.input_tokens.with_raw_response.count(model="up", input=text)
        again = client.responses.input_tokens.with_raw_response.count(model="up", input=text)
    assert first.parse().input_tokens == again.parse().input_tokens == 101  # four characters a token (402 with "tools")
    assert first.headers["x-pitstop-token-count"] == again.headers["x-pitstop-token-count"] == "estimated"
    backend = gw.state.pool.by_model["up"][0].backend
    assert backend._tokenizes is False  # type: ignore[attr-defined]  # asked once, not again


def test_a_route_group_counts_on_the_model_it_routes_to(gw: Gateway) -> None:
    with gw.openai() as client:
        counted = client.responses.input_tokens.with_raw_response.count(model="grp", input="Which model am I?")
        direct = client.responses.input_tokens.count(model="tiny", input="Which model am I?")
    assert counted.headers["x-pitstop-deployment"] in ("tiny#0", "remote#0")  # one tokenizer: one count
    assert counted.parse().input_tokens == direct.input_tokens


def test_a_chat_the_engine_would_refuse_is_a_400_when_counted_too(gw: Gateway) -> None:
    image = {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}
    with gw.openai() as client:
        with pytest.raises(openai.BadRequestError) as counted:
            client.responses.input_tokens.count(model="tiny", input=[image])  # type: ignore[list-item]
        with pytest.raises(openai.BadRequestError) as served:
            client.responses.create(model="tiny", input=[image], max_output_tokens=2)  # type: ignore[list-item]
    assert counted.value.body["message"] == served.value.body["message"]  # type: ignore[index]
    with httpx.Client(base_url=gw.url) as http:
        answer = http.post("/v1/messages/count_tokens", json={"model": "tiny", "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "AAAA"}}]}]})
    assert answer.status_code == 400 and answer.json()["type"] == "error"


def test_models_list_their_context_window_where_it_is_known(gw: Gateway) -> None:
    """vLLM's `max_model_len` in /v1/models: the in-process engine's, the engine server's (its /v1/models),
    litellm's map for gpt-4o, a route group's least; none for an upstream that does not say."""
    def listed() -> dict[str, int | None]:
        with gw.openai() as client:
            return {m.id: getattr(m, "max_model_len", None) for m in client.models.list()}

    windows = wait_until(lambda: (found := listed())["remote"] is not None and found, what="the windows learnt")
    assert windows == {"grp": 512, "tiny": 512, "remote": 512, "up": None, "gpt-4o": 128_000}
    with gw.openai() as client:
        assert getattr(client.models.retrieve("grp"), "max_model_len", None) == 512
