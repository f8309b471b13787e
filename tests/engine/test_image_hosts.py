"""Image URLs from allowed hosts only (`--allowed-media-domains`, vLLM's flag): a client must not make the engine
fetch from a host it was not told to (a cloud's metadata address, an internal service), directly or through a
redirect. A local server plays both hosts: `127.0.0.1` allowed, `localhost` (the same server) not."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.cli import add_engine_commands
from engine.config import ImageLimits
from engine.image_fetch import MAX_REDIRECTS, image_bytes
from engine.server.errors import APIError
from tests.engine.file_server import QuietHandler, http_server
from tests.engine.llava_inputs import data_url, picture, png_bytes
from tests.engine.serving import engine_server, sdk

PNG = png_bytes(picture(2))
ALLOWED = ImageLimits(allowed_domains=frozenset({"127.0.0.1"}))


class _Redirects(QuietHandler):
    """/cat.png: the picture; /to/HOST: a 302 to HOST's /cat.png on this server; /loop: a redirect to itself."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        port = self.server.server_address[1]
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
            return
        target = "/loop" if self.path == "/loop" else f"http://{self.path.removeprefix('/to/')}:{port}/cat.png"
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with http_server(_Redirects) as url:
        yield int(url.rsplit(":", 1)[1])


def fetch(url: str, limits: ImageLimits) -> bytes:
    async def run() -> bytes:
        async with httpx.AsyncClient() as client:
            return await image_bytes(url, "messages[0].content[0].image_url", limits, client)
    return asyncio.run(run())


def refusal(url: str, limits: ImageLimits) -> str:
    with pytest.raises(APIError) as error:
        fetch(url, limits)
    assert error.value.status == 400
    return error.value.code or ""


def test_any_host_by_default_and_redirects_followed(port: int) -> None:
    assert fetch(f"http://localhost:{port}/cat.png", ImageLimits()) == PNG
    assert fetch(f"http://127.0.0.1:{port}/to/localhost", ImageLimits()) == PNG


def test_only_the_allowed_hosts_are_fetched_each_redirect_checked(port: int) -> None:
    assert fetch(f"http://127.0.0.1:{port}/cat.png", ALLOWED) == PNG
    assert fetch(f"http://127.0.0.1:{port}/to/127.0.0.1", ALLOWED) == PNG  # a redirect within the allowed hosts
    assert refusal(f"http://localhost:{port}/cat.png", ALLOWED) == "image_url_not_allowed"
    assert refusal(f"http://127.0.0.1:{port}/to/localhost", ALLOWED) == "image_url_not_allowed"
    mixed_case = ImageLimits(allowed_domains=frozenset({"LocalHost"}))  # hosts compare in lower case
    assert fetch(f"http://LOCALHOST:{port}/cat.png", mixed_case) == PNG


def test_a_redirect_loop_is_a_400_not_a_hang(port: int) -> None:
    assert MAX_REDIRECTS == 5
    assert refusal(f"http://127.0.0.1:{port}/loop", ImageLimits()) == "image_fetch_failed"


def test_the_flag_reaches_the_engine_over_http(port: int, tiny_llava_dir: Path) -> None:
    parser = argparse.ArgumentParser()
    add_engine_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "m", "--allowed-media-domains", "127.0.0.1", "LocalHost"])
    assert args.allowed_media_domains == ["127.0.0.1", "LocalHost"]
    with engine_server(tiny_llava_dir, image_limits=ALLOWED) as url:
        client = sdk(url)

        def ask(image: str) -> openai.types.chat.ChatCompletion:
            return client.chat.completions.create(model="tiny", max_tokens=2, temperature=0, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}])

        assert ask(f"http://127.0.0.1:{port}/cat.png").usage.prompt_tokens > 16
        assert ask(data_url(picture(2))).usage.prompt_tokens > 16  # inline images need no host
        with pytest.raises(openai.BadRequestError) as error:
            ask(f"http://127.0.0.1:{port}/to/localhost")
        assert error.value.code == "image_url_not_allowed" and "localhost" in error.value.message
