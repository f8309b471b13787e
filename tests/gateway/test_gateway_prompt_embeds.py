"""prompt_embeds through the gateway (openai SDK, extra_body): forwarded unchanged to `pitstop engine serve
--enable-prompt-embeds` over pitstop-engine/, hosted_vllm/ direct and hosted_vllm/ through litellm, and taken
by an engine in the gateway's process whose litellm_params set enable_prompt_embeds: every way the answer of
the prompt's ids. The gateway counts a payload's rows from its tensor header (gateway/prompt_embeds.py): the
outcome row's prompt size, and a 400 for a payload whose header is not a tensor's."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from engine.tiny_model import make_tiny_model
from gateway.prompt_embeds import prompt_embeds_rows
from gateway.request_body import parse_proxy_request
from tests.engine.serving import engine_server
from tests.gateway.harness import gateway_config, model_entry, running_gateway

IDS = [17, 203, 5, 999, 42, 8, 311, 77, 64, 130, 2, 901]


def b64(value: object) -> str:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def engine_url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, "tiny", enable_prompt_embeds=True) as url:
        yield url


def _served(name: str, api_base: str, **params: object) -> dict:
    """A gateway model `name` of the engine server's model "tiny"."""
    return model_entry("tiny", api_base, **params) | {"model_name": name}


def _in_process(name: str, model_dir: Path, **params: object) -> dict:
    return {"model_name": name, "model_info": {}, "litellm_params": {
        "model": f"pitstop-local/{name}", "model_dir": str(model_dir), "num_blocks": 64, "max_model_len": 256,
        **params}}


def test_every_backend_answers_the_embeddings_as_the_ids(tmp_path: Path, tiny_model_dir: Path,
                                                         engine_url: str) -> None:
    from transformers import AutoModelForCausalLM

    rows = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).get_input_embeddings().weight
    payload = b64(rows.detach()[IDS])
    api_base = f"{engine_url}/v1"
    models = [_served("engine", api_base), _served("vllm-litellm", api_base, provider="hosted_vllm"),
              _served("vllm-direct", api_base, provider="hosted_vllm", transport="direct"),
              _in_process("local", tiny_model_dir, enable_prompt_embeds=True), _in_process("off", tiny_model_dir)]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        def complete(model: str, prompt: object, **extra: object) -> object:
            return client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0,  # type: ignore[arg-type]
                                             extra_body={"ignore_eos": True, **extra})

        expected = complete("engine", IDS).choices[0].text  # type: ignore[attr-defined]
        answers = {model: complete(model, "", prompt_embeds=payload)
                   for model in ("engine", "vllm-litellm", "vllm-direct", "local")}
        off = gateway.http().post("/v1/completions", json={"model": "off", "prompt": "", "prompt_embeds": payload})
        bad = gateway.http().post("/v1/completions", json={"model": "engine", "prompt_embeds": "aGVsbG8gd29ybGQh"})
        rows_of = gateway.rows(gateway.request_ids)
    for model, answer in answers.items():
        assert answer.choices[0].text == expected, model  # type: ignore[attr-defined]
        assert answer.usage.prompt_tokens == len(IDS), model  # type: ignore[attr-defined]
    assert off.status_code == 400 and "--enable-prompt-embeds" in off.json()["error"]["message"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_embeds"
    assert sorted(row["model"] for row in rows_of if row["status"] == "ok") == sorted([*answers, "engine"])
    assert all(row["prompt_tokens"] == len(IDS) for row in rows_of if row["status"] == "ok")


def test_rows_are_read_from_the_tensor_header_without_torch() -> None:
    assert prompt_embeds_rows(b64(torch.zeros(7, 48))) == 7
    assert prompt_embeds_rows([b64(torch.zeros(1, 5, 48, dtype=torch.bfloat16)), b64(torch.zeros(3, 4))]) == 8
    parsed = parse_proxy_request({"model": "m", "prompt": "four", "prompt_embeds": b64(torch.zeros(10, 8))},
                                 "completion", httpx.Headers())
    assert parsed.prompt_chars == 4 + 40  # the prompt's characters and four a row
    for bad in ("%%%", base64.b64encode(b"hello world!").decode(), b64({"rows": torch.zeros(2, 2)}),
                b64(torch.zeros(3)), base64.b64encode(b"PK\x03\x04" + bytes(26) + b"cos\nsystem\n(S'true'\ntR.").decode(),
                [], 5):
        with pytest.raises(Exception, match="prompt_embeds"):
            prompt_embeds_rows(bad)
