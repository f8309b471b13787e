"""A forward HTTP proxy for tests, on a real socket in a thread: each request (absolute-form, as a client
sends plain-HTTP requests to a proxy) is recorded, sent on to its host in origin form with `Connection: close`,
and the answer piped back as it streams (an MCP server's event streams included); CONNECT tunnels too.
`requests` lists each as "METHOD URL"."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.requests)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.decode("latin-1").partition("\r\n")
            method, target, version = line.split(" ")
            with self._lock:
                self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)
                upstream_reader, upstream_writer = await asyncio.open_connection(url.hostname, url.port or 80)
                headers = [h for h in rest.split("\r\n") if h and not h.lower().startswith(
                    ("connection:", "proxy-connection:", "keep-alive:"))]
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                upstream_writer.write(f"{method} {path} {version}\r\n".encode("latin-1")
                                      + "".join(f"{h}\r\n" for h in headers).encode("latin-1")
                                      + b"Connection: close\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        if sink.can_write_eof():
            try:
                sink.write_eof()
            except OSError:
                sink.close()


@contextmanager
def forward_proxy() -> Iterator[tuple[ForwardProxy, str]]:
    """The proxy and its URL (`http://127.0.0.1:PORT`)."""
    proxy, loop, started = ForwardProxy(), asyncio.new_event_loop(), threading.Event()
    holder: dict = {}

    async def serve() -> None:
        holder["server"] = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    started.wait(10)
    port = holder["server"].sockets[0].getsockname()[1]
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
