"""Image token estimates per deployment over real sockets (openai SDK through a running gateway): a gpt-4o
deployment's tpm window counts a 2048 x 4096 "high" image at OpenAI's 1105 tokens and passes it to the
model's other deployment, where the same image at detail "low" (85) or a small one stays; the count endpoint's
estimate on Gemini, Claude and an engine over HTTP with `image_token_estimate` grows with the image as each
counts it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.harness import Gateway, gateway_config, running_gateway
from tests.gateway.image_data import SMALL, TALL
from tests.gateway.upstream import UpstreamProcess


def entry(name: str, model: str, info: dict | None = None, **params: object) -> dict:
    return {"model_name": name, "litellm_params": {"model": model, **params},
            "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, **(info or {})}}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [entry("vision", "openai/gpt-4o", api_base=a.api_base, tpm=1000),
              entry("vision", "openai/gpt-4o", api_base=b.api_base, tpm=100000),
              entry("gemini", "gemini/gemini-2.0-flash", api_key="unused"),
              entry("gemini3", "gemini/gemini-3-pro-preview", api_key="unused"),
              entry("claude", "anthropic/claude-sonnet-4-5", api_key="unused"),
              entry("remote", "pitstop-engine/remote", {"image_token_estimate": 300}, api_base=a.api_base)]
    tmp = tmp_path_factory.mktemp("image-estimates")
    with running_gateway(gateway_config(tmp, models, server={"allowed_fails": 1000})) as gateway:
        yield gateway


def with_image(url: str, detail: str = "high") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is it"},
                                         {"type": "image_url", "image_url": {"url": url, "detail": detail}}]}]


def test_a_deployments_tpm_window_counts_an_image_as_its_provider_does(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    client = gw.openai()

    def served_by(messages: list[dict]) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(model="vision", messages=messages, max_tokens=5)
        return raw.parse().choices[0].message.content.split()[0], raw.headers["x-pitstop-request-id"]

    assert served_by([{"role": "user", "content": "hi"}])[0] == "from-a"  # a's window now holds its usage
    assert served_by(with_image(SMALL))[0] == "from-a"  # 255 + a few: within a's 1000
    assert served_by(with_image(TALL, "low"))[0] == "from-a"  # detail "low": 85
    tall, request_id = served_by(with_image(TALL))
    assert tall == "from-b"  # 1105 would take a past its 1000 (at 576 an image, it would have stayed)
    gw.flush()
    assert gw.row(request_id)["extra"]["deployment_limits"] == {"vision": {"skipped": {"vision#0": "tpm"}}}
    assert (a.stats()["requests"], b.stats()["requests"]) == (3, 1)


def test_the_count_fallback_counts_an_image_as_the_models_deployments_do(gw: Gateway) -> None:
    client = gw.openai()

    def counted(model: str, url: str, detail: str = "high") -> int:
        raw = client.responses.input_tokens.with_raw_response.count(model=model, input=[
            {"role": "user", "content": [{"type": "input_text", "text": "what is it"},
                                         {"type": "input_image", "image_url": url, "detail": detail}]}])
        assert raw.headers["x-pitstop-token-count"] == "estimated"
        return raw.parse().input_tokens

    text = {model: counted(model, SMALL) - small for model, small in (("gemini", 258), ("claude", 8 * 11),
                                                                         ("remote", 300))}
    assert len(set(text.values())) == 1 and 0 < text["gemini"] < 20  # the same text estimate under each
    assert counted("gemini", TALL) - text["gemini"] == 258 * 3 * 6  # 768-pixel tiles
    # Gemini 3: the part's media resolution (its detail, as litellm maps it), whatever the size; unset is high.
    assert [counted("gemini3", TALL, detail) - text["gemini"] for detail in ("auto", "low", "medium", "ultra_high")] \
        == [1120, 280, 560, 2240]
    assert counted("claude", TALL) - text["claude"] == 28 * 56  # shrunk to 784 x 1568: within 1568 patches
    assert counted("remote", TALL) - text["remote"] == 300  # model_info.image_token_estimate, whatever its size
    assert counted("remote", "https://example.com/a.png") - text["remote"] == 300  # never fetched
