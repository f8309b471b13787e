"""Image URLs only to the addresses the URL rules allow (engine/net_guard.py, the gateway's `outbound:` rules too):
each connection's resolved address is checked, a redirect's included, so a client cannot make the engine fetch a
cloud's metadata address (never, unless named in --allowed-media-domains) or, with --no-allow-private-media-urls,
a name that resolves to its own loopback. The metadata address would hang a plain fetch for the whole (long)
timeout and then be `image_fetch_failed`: `image_url_not_allowed` means nothing was connected."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import openai
import pytest

from engine.cli import add_engine_commands
from engine.config import ImageLimits
from engine.image_fetch import image_bytes, media_client
from engine.net_guard import OutboundPolicy
from engine.server.errors import APIError
from tests.engine.llava_inputs import data_url, picture
from tests.engine.serving import engine_server, sdk
from tests.engine.test_image_hosts import PNG, port  # noqa: F401 (the redirecting server, a fixture)
from tests.gateway.harness import gateway_config, running_gateway

PARAM = "messages[0].content[0].image_url"
METADATA = "http://169.254.169.254/latest/meta-data/"
DEFAULT = ImageLimits(fetch_timeout_s=30)  # long: a connection tried would make a slow image_fetch_failed
STRICT = ImageLimits(fetch_timeout_s=30, allow_private=False)


def fetch(url: str, limits: ImageLimits) -> bytes:
    async def run() -> bytes:
        async with media_client(limits) as client:
            return await image_bytes(url, PARAM, limits, client)
    return asyncio.run(run())


def refusal(url: str, limits: ImageLimits) -> str:
    with pytest.raises(APIError) as error:
        fetch(url, limits)
    assert error.value.status == 400 and error.value.param == PARAM
    assert error.value.code == "image_url_not_allowed", error.value.message
    return error.value.message


def test_the_metadata_address_is_refused_by_default_directly_mapped_or_redirected(port: int) -> None:  # noqa: F811
    assert "is a link-local address" in refusal(METADATA, DEFAULT)
    assert "is a link-local address" in refusal("http://[::ffff:169.254.169.254]/latest/", DEFAULT)
    assert "link-local" in refusal(f"http://127.0.0.1:{port}/to/169.254.169.254", DEFAULT)
    assert fetch(f"http://localhost:{port}/cat.png", DEFAULT) == PNG  # private addresses: allowed by default
    named = ImageLimits(fetch_timeout_s=1, allowed_domains=frozenset({"169.254.169.254"}))
    with pytest.raises(APIError) as error:  # named by the operator: tried (nothing answers there)
        fetch(METADATA, named)
    assert error.value.code == "image_fetch_failed"


def test_private_addresses_refused_by_resolved_address_when_the_flag_says_so(port: int) -> None:  # noqa: F811
    assert "resolves to 127.0.0.1, a loopback address (--allow-private-media-urls is false)" in refusal(
        f"http://localhost:{port}/cat.png", STRICT)
    assert "is a loopback address" in refusal(f"http://[::ffff:127.0.0.1]:{port}/cat.png", STRICT)
    assert "is a loopback address" in refusal(f"http://127.0.0.1:{port}/cat.png", STRICT)
    trusted = ImageLimits(allowed_domains=frozenset({"127.0.0.1"}), allow_private=False)
    assert fetch(f"http://127.0.0.1:{port}/cat.png", trusted) == PNG  # named hosts: whatever they resolve to


def test_a_redirect_to_a_refused_address_is_refused(port: int) -> None:  # noqa: F811
    # 127.0.0.1 trusted by name, no name list: the redirect's host passes by name, its address is refused
    rules = OutboundPolicy(allow_private=False, allowed_hosts=("127.0.0.1",))
    limits = ImageLimits(fetch_timeout_s=30, url_policy=lambda: rules)
    assert fetch(f"http://127.0.0.1:{port}/to/127.0.0.1", limits) == PNG
    assert "'localhost' resolves to 127.0.0.1" in refusal(f"http://127.0.0.1:{port}/to/localhost", limits)


def test_the_address_rules_over_http(port: int, tiny_llava_dir: Path) -> None:  # noqa: F811
    parser = argparse.ArgumentParser()
    add_engine_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve", "--model", "m"]).allow_private_media_urls is True
    assert parser.parse_args(["serve", "--model", "m", "--no-allow-private-media-urls"]).allow_private_media_urls is False

    def refused(client: openai.OpenAI, image: str) -> str:
        with pytest.raises(openai.BadRequestError) as error:
            ask(client, image)
        assert error.value.code == "image_url_not_allowed"
        return error.value.message

    for limits in (DEFAULT, STRICT):
        with engine_server(tiny_llava_dir, image_limits=limits) as url:
            client = sdk(url)
            assert "link-local" in refused(client, METADATA)
            assert ask(client, data_url(picture(2))).usage.prompt_tokens > 16  # inline images need no address
            if limits.allow_private:
                assert "link-local" in refused(client, f"http://127.0.0.1:{port}/to/169.254.169.254")
                assert ask(client, f"http://localhost:{port}/cat.png").usage.prompt_tokens > 16
            else:
                assert "resolves to 127.0.0.1" in refused(client, f"http://localhost:{port}/cat.png")
                assert "loopback" in refused(client, f"http://[::ffff:127.0.0.1]:{port}/cat.png")


def ask(client: openai.OpenAI, image: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="tiny", max_tokens=2, temperature=0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}])


def test_an_in_process_engine_follows_the_gateways_outbound_section(tmp_path: Path, tiny_llava_dir: Path,
                                                                    port: int) -> None:  # noqa: F811
    entry = {"model_name": "tiny", "model_info": {},
             "litellm_params": {"model": "pitstop-local/tiny", "model_dir": str(tiny_llava_dir), "num_blocks": 64,
                                "max_model_len": 256}}
    outbound = {"allow_private": False, "allowed_hosts": ["127.0.0.1"]}
    with running_gateway(gateway_config(tmp_path, [entry], outbound=outbound)) as gateway, gateway.openai() as client:
        assert ask(client, f"http://127.0.0.1:{port}/cat.png").usage.prompt_tokens > 16  # allowed_hosts names it
        for url, why in [(f"http://localhost:{port}/cat.png", "outbound.allow_private is false"),
                         (f"http://127.0.0.1:{port}/to/localhost", "outbound.allow_private is false"),
                         (METADATA, "link-local")]:
            with pytest.raises(openai.BadRequestError) as error:
                ask(client, url)
            assert error.value.code == "image_url_not_allowed" and why in error.value.message, url
