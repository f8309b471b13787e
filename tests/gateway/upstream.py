"""A fake OpenAI-compatible upstream, run as its own process (uvicorn + a small Starlette app).

It answers /v1/chat/completions and /v1/completions, whole or streamed (usage in a last chunk when
`stream_options.include_usage` is set, as OpenAI does), and answers with a `tool_calls` message when
`tools` are sent (the prompt's text as the first tool's first required parameter, else as `q`; a custom
tool's input, streamed in two pieces), so tool passthrough is tested end to end. The answer is `N` words, the first naming
the instance (`from-a`), so a test can tell which deployment served it; usage counts words. It also
answers /v1/embeddings, with vectors that say what they embed (`embedding_of`), and /v1/moderations, with
results its texts ask for (`[flag:violence]`: tests/gateway/upstream_moderation.py), and OpenAI's audio and image
endpoints with answers derived from what they were sent (tests/gateway/upstream_media.py), and OpenAI's
Videos API: jobs that go queued, in_progress, completed over a few polls (tests/gateway/upstream_videos.py).

Faults, chosen per request by directives in the last user message (or the prompt); a directive with
`@name` applies to that instance only:
  [fail:500]  [fail:429@a]   answer that status (OpenAI error shape) before the first byte
  [break:2]                  stream: drop the connection after 2 content chunks (or all, if fewer)
  [delay:0.5]                wait before answering
  [context:20@a]             a context of 20 words: a longer prompt is a 400 in vLLM's words ("This
                             model's maximum context length is ..."), with no error code
  [words:8]                  answer 8 words (default 5)
  [think:3]                  think first, as a reasoning model behind vLLM's reasoning parser does: 3
                             words of `reasoning_content` (streamed before the answer)
  [tools:1]                  call a tool (when tools are sent) only while fewer than 1 tool result
                             follows the last user message, then answer in words: an agent loop that ends
  [echo:1]                   answer the last user message's words (the directives left out): what it read
  [prompt:N] [cached:N]      usage: N prompt tokens (default: the prompt's words), N of them cached
  [created:N]                N written to the prompt cache, reported as litellm reports Anthropic's
  [created1h:N]              N of those written for an hour (litellm's cache_creation_token_details)
  [answer:B]  [answer:42@b]  answer exactly this text (a short answer, for verified route groups); one
                             naming the instance wins over one that does not
and per instance through `POST /_admin/mode {"fail": 500}` (every request fails until reset), or
`{"words": 300}` (answers of 300 words where a request sets none).
`GET /_admin/stats` counts the requests this instance took and keeps the last bodies.

The answering itself (directives, words, tool calls, streams, embeddings) is upstream_answers.py; this
module serves it over HTTP and starts it as a process.

`python -m tests.gateway.upstream --name a` binds a free port and prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

# The answering names, re-exported: tests import them from here.
from tests.gateway.upstream_answers import (  # noqa: F401
    DEFAULT_WORDS,
    Upstream,
    answer_directive,
    directives,
    embedding_of,
    error_response,
)
from tests.gateway.upstream_media import edit_images, generate_images, speak, transcribe
from tests.gateway.upstream_moderation import moderate
from tests.gateway.upstream_videos import (
    create_video,
    delete_video,
    remix_video,
    retrieve_video,
    video_content,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_app(name: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    upstream = Upstream(name)

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def chat(request: Request) -> Any:
        return await upstream.handle(await body_of(request), chat=True)

    async def completions(request: Request) -> Any:
        return await upstream.handle(await body_of(request), chat=False)

    async def embeddings(request: Request) -> Any:
        return await upstream.embed(await body_of(request))

    async def moderations(request: Request) -> Any:
        return await moderate(upstream, await body_of(request))

    async def transcriptions(request: Request) -> Any:
        return await transcribe(upstream, request, translated=False)

    async def translations(request: Request) -> Any:
        return await transcribe(upstream, request, translated=True)

    async def speech(request: Request) -> Any:
        return await speak(upstream, await body_of(request))

    async def images(request: Request) -> Any:
        return await generate_images(upstream, await body_of(request))

    async def image_edits(request: Request) -> Any:
        return await edit_images(upstream, request)

    async def videos(request: Request) -> Any:
        return await create_video(upstream, request)

    async def video(request: Request) -> Any:
        video_id = request.path_params["video_id"]
        if request.method == "DELETE":
            return await delete_video(upstream, video_id)
        return await retrieve_video(upstream, video_id)

    async def video_bytes(request: Request) -> Any:
        return await video_content(upstream, request.path_params["video_id"], request.query_params.get("variant", "video"))

    async def video_remix(request: Request) -> Any:
        return await remix_video(upstream, request.path_params["video_id"], await body_of(request))

    async def models(request: Request) -> Any:
        return JSONResponse({"object": "list", "data": [{"id": "upstream", "object": "model", "owned_by": name}]})

    async def mode(request: Request) -> Any:
        body = await body_of(request) or {}
        if "fail" in body:
            upstream.fail_status = body["fail"]
        if "words" in body:
            upstream.default_words = body["words"] or DEFAULT_WORDS
        return JSONResponse({"fail": upstream.fail_status, "words": upstream.default_words})

    async def stats(request: Request) -> Any:
        return JSONResponse({"name": name, "requests": upstream.requests, "bodies": upstream.bodies})

    async def reset(request: Request) -> Any:
        upstream.fail_status, upstream.requests, upstream.bodies = None, 0, []
        upstream.default_words = DEFAULT_WORDS
        return JSONResponse({"reset": True})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/moderations", moderations, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", translations, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/images/edits", image_edits, methods=["POST"]),
        Route("/v1/videos", videos, methods=["POST"]),
        Route("/v1/videos/{video_id}", video, methods=["GET", "DELETE"]),
        Route("/v1/videos/{video_id}/content", video_bytes, methods=["GET"]),
        Route("/v1/videos/{video_id}/remix", video_remix, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/_admin/mode", mode, methods=["POST"]),
        Route("/_admin/stats", stats, methods=["GET"]),
        Route("/_admin/reset", reset, methods=["POST"]),
    ])


class UpstreamProcess:
    """A running upstream process; `url` is its root, `api_base` what a model entry points at."""

    def __init__(self, name: str, timeout_s: float = 30.0) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.gateway.upstream", "--name", name],
                                     cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the child listens (or dies: empty line)
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"upstream {name} did not start (exit code {self.proc.returncode})")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        self.api_base = self.url + "/v1"
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)

    def set_fail(self, status: int | None) -> None:
        self._client.post("/_admin/mode", json={"fail": status}).raise_for_status()

    def set_words(self, words: int | None) -> None:
        """Answers of `words` words where a request sets none (None: the default)."""
        self._client.post("/_admin/mode", json={"words": words}).raise_for_status()

    def stats(self) -> dict:
        return self._client.get("/_admin/stats").json()

    def reset(self) -> None:
        self._client.post("/_admin/reset").raise_for_status()

    def close(self) -> None:
        if hasattr(self, "_client"):
            self._client.close()
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="up")
    args = parser.parse_args()
    # IPPROTO_TCP named, or asyncio leaves TCP_NODELAY off on the accepted connections (it checks the
    # protocol), and Nagle meets delayed ACKs: 40 ms a request.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(build_app(args.name), log_level="critical", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def exit_with_parent() -> None:
        sys.stdin.read()  # returns when the test process closes the pipe or dies: no orphans
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
