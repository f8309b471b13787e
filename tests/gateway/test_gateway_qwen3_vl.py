"""A Qwen3-VL deployment (DeepStack, interleaved M-RoPE) behind the gateway: a chat's image_url part and a
Responses input_image reach the engine unchanged, over HTTP (`pitstop-engine/`) and in process (`pitstop-local/`), the same answer and the same
prompt tokens (the image's own dynamic-resolution count) either way."""

from __future__ import annotations

from pathlib import Path

from engine.tiny_qwen3_vl import make_tiny_qwen3_vl
from tests.engine.llava_inputs import data_url
from tests.engine.qwen2_5_vl_inputs import picture
from tests.engine.serving import engine_server
from tests.gateway.harness import gateway_config, model_entry, running_gateway
from tests.gateway.test_gateway_images import local

IMAGE = data_url(picture(1, (48, 40)))  # 30 tokens: a 12 x 10 patch grid merged 2 x 2
CHAT = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": IMAGE}}]}]


def test_image_parts_reach_a_qwen3_vl_engine_over_http_and_in_process(tmp_path: Path) -> None:
    model_dir = make_tiny_qwen3_vl(tmp_path / "qwen3_vl")
    with engine_server(model_dir, "remote") as engine_url:
        config = gateway_config(tmp_path, [model_entry("remote", f"{engine_url}/v1"), local("inproc", model_dir)])
        with running_gateway(config) as gateway, gateway.openai() as client:
            answers = {name: client.chat.completions.create(model=name, messages=CHAT, max_tokens=5, temperature=0)
                       for name in ("remote", "inproc")}
            text_only = client.chat.completions.create(
                model="inproc", messages=[{"role": "user", "content": "What is this?"}], max_tokens=5, temperature=0)
            response = client.responses.create(model="remote", max_output_tokens=5, temperature=0, input=[
                {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                             {"type": "input_image", "image_url": IMAGE}]}])
    remote, inproc = answers["remote"], answers["inproc"]
    assert remote.choices[0].message.content == inproc.choices[0].message.content
    assert remote.usage is not None and inproc.usage is not None and text_only.usage is not None
    # the picture's 30 pad tokens, its vision start and end: 32 more than the same chat without it
    assert remote.usage.prompt_tokens == inproc.usage.prompt_tokens == text_only.usage.prompt_tokens + 32
    assert response.output_text and response.usage is not None and response.usage.input_tokens == remote.usage.prompt_tokens
