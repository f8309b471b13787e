"""Image parts through the gateway to Pitstop's engine: a chat with an image_url part, and a Responses API
input_image, reach a LLaVA deployment unchanged, over HTTP (`pitstop-engine/`) and in process
(`pitstop-local/`), with the same answer either way; a text-only engine deployment refuses them as a 400;
token counts and the gateway's estimates count an image."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from engine.tiny_llava import make_tiny_llava
from engine.tiny_model import make_tiny_model
from gateway.image_tokens import DEFAULT_IMAGE_TOKENS
from gateway.request_body import check_messages
from gateway.token_count import chat_input_tokens
from tests.engine.llava_inputs import data_url, picture
from tests.engine.serving import engine_server
from tests.gateway.harness import gateway_config, model_entry, running_gateway

IMAGE = data_url(picture(1))
CHAT = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": IMAGE}}]}]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llava(tmp_path_factory.mktemp("llava"), image_size=56)


def local(name: str, model_dir: Path) -> dict:
    return {"model_name": name, "model_info": {},
            "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(model_dir), "num_blocks": 64,
                               "max_model_len": 256}}


def test_image_parts_reach_the_engine_over_http_and_in_process(tmp_path: Path, llava_dir: Path) -> None:
    with engine_server(llava_dir, "remote") as engine_url:
        config = gateway_config(tmp_path, [model_entry("remote", f"{engine_url}/v1"), local("inproc", llava_dir),
                                           local("text", make_tiny_model(tmp_path / "text"))])
        with running_gateway(config) as gateway, gateway.openai() as client:
            answers = {name: client.chat.completions.create(model=name, messages=CHAT, max_tokens=5, temperature=0)
                       for name in ("remote", "inproc")}
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                model="inproc", messages=CHAT, max_tokens=5, temperature=0, stream=True) if chunk.choices)
            response = client.responses.create(model="inproc", max_output_tokens=5, temperature=0, input=[
                {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                             {"type": "input_image", "image_url": IMAGE}]}])
            with pytest.raises(openai.BadRequestError, match="does not take image inputs"):
                client.chat.completions.create(model="text", messages=CHAT, max_tokens=5)
            with gateway.http() as http:
                counted = {name: http.post("/v1/responses/input_tokens", json={"model": name, "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]}) for name in
                    ("remote", "inproc")}
    remote, inproc = answers["remote"], answers["inproc"]
    assert remote.choices[0].message.content == inproc.choices[0].message.content == streamed
    assert remote.usage is not None and inproc.usage is not None
    assert remote.usage.prompt_tokens == inproc.usage.prompt_tokens > 16  # the image's 16 feature tokens in
    assert response.output_text and response.usage is not None and response.usage.input_tokens > 16
    for name, answer in counted.items():
        assert isinstance(answer, httpx.Response) and answer.status_code == 200, (name, answer.text)
        assert answer.headers["x-pitstop-token-count"] == "counted" and answer.json()["input_tokens"] > 16


def test_the_gateway_estimates_an_image_as_default_image_tokens_before_routing() -> None:
    text_only = [{"role": "user", "content": "What is this?"}]
    last_user, chars = check_messages(CHAT)
    assert last_user == "What is this?"  # routers read the text only
    assert chars == check_messages(text_only)[1] + 4 * DEFAULT_IMAGE_TOKENS
    assert chat_input_tokens({"messages": CHAT}) == chat_input_tokens({"messages": text_only}) + DEFAULT_IMAGE_TOKENS


def test_an_in_process_engines_image_limits_come_from_its_litellm_params(tmp_path: Path, llava_dir: Path) -> None:
    limited = local("limited", llava_dir)
    limited["litellm_params"]["image_limits"] = {"max_images": 1, "allowed_media_domains": ["127.0.0.1"]}
    with running_gateway(gateway_config(tmp_path, [limited, local("open", llava_dir)])) as gateway, \
            gateway.openai() as client:
        def refusal(model: str, *urls: str) -> str | None:
            content = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
            try:
                client.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": content}])
            except openai.BadRequestError as exc:
                return exc.code
            return None

        assert refusal("limited", IMAGE) is None
        assert refusal("limited", IMAGE, IMAGE) == "too_many_images"
        assert refusal("open", IMAGE, IMAGE) is None  # the engine's defaults: 8
        # refused by its host before anything is fetched (nothing listens there either way)
        assert refusal("limited", "http://localhost:9/cat.png") == "image_url_not_allowed"
        assert refusal("open", "http://localhost:9/cat.png") == "image_fetch_failed"
