"""A chat's image through the gateway to a Gemma 3 engine deployment, over HTTP (`pitstop-engine/`) and in
process (`pitstop-local/`): the same answer and the same prompt tokens (the image widened in the text, 16 image
tokens between its begin and end tokens), and the engine's own answer for the image on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tiny_gemma3_vision import make_tiny_gemma3_vision
from tests.engine.gemma3_vision_inputs import picture
from tests.engine.llava_inputs import data_url
from tests.engine.serving import engine_server, sdk
from tests.gateway.harness import gateway_config, model_entry, running_gateway

CHAT = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": data_url(picture(1))}}]}]


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gemma3_vision(tmp_path_factory.mktemp("gemma3_vision"))


def test_an_image_reaches_a_gemma3_engine_over_http_and_in_process(tmp_path: Path, gemma3_dir: Path) -> None:
    inproc = {"model_name": "inproc", "model_info": {}, "litellm_params": {
        "model": "pitstop-local/inproc", "model_dir": str(gemma3_dir), "num_blocks": 64, "max_model_len": 256}}
    with engine_server(gemma3_dir, "remote") as engine_url:
        direct = sdk(engine_url).chat.completions.create(model="remote", messages=CHAT, max_tokens=5, temperature=0)
        config = gateway_config(tmp_path, [model_entry("remote", f"{engine_url}/v1"), inproc])
        with running_gateway(config) as gateway, gateway.openai() as client:
            answers = {name: client.chat.completions.create(model=name, messages=CHAT, max_tokens=5, temperature=0)
                       for name in ("remote", "inproc")}
    assert direct.usage is not None and direct.usage.prompt_tokens > 18
    for answer in answers.values():
        assert answer.choices[0].message.content == direct.choices[0].message.content
        assert answer.usage is not None and answer.usage.prompt_tokens == direct.usage.prompt_tokens
