"""An image part's bytes and picture: a `data:` URL (base64) or an http(s) URL the engine fetches, within a
size limit and a timeout (from the allowed hosts only, where a list is given), decoded by Pillow (PNG, JPEG, WebP,
GIF: the first frame) into RGB. Every failure is the caller's 400 in OpenAI's shape, naming the part.

A fetch connects only to the addresses the URL rules allow (engine/net_guard.py, the gateway's `outbound:` rules
too): the client's transport checks each connection's resolved address, a redirect's included, so a client cannot
make the engine fetch a cloud's metadata address or, with --no-allow-private-media-urls, its own ports."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable

import httpx
from PIL import Image

from engine.config import ImageLimits
from engine.net_guard import OutboundPolicy, RuleNames, UrlRefused, refusal_of
from engine.net_transport import guarded_httpx
from engine.server.errors import APIError, bad_request

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_REDIRECTS = 5
# What a refusal names, for `pitstop engine serve`'s flags (an engine has no deny list)
MEDIA_RULES = RuleNames("--allow-private-media-urls", "--allowed-media-domains", "no list", "this engine's")


def media_policy(limits: ImageLimits) -> Callable[[], OutboundPolicy]:
    """The address rules for image fetches: the gateway's (an in-process engine), else the engine's flags; the
    hosts --allowed-media-domains names are trusted whatever they resolve to (the operator named them)."""
    if limits.url_policy is not None:
        return limits.url_policy
    policy = OutboundPolicy(limits.allow_private, tuple(sorted(limits.allowed_domains or ())), names=MEDIA_RULES)
    return lambda: policy


def media_client(limits: ImageLimits) -> httpx.AsyncClient:
    """A client whose every connection goes only where `media_policy` allows: straight to the checked address
    (no proxy from the environment), or through the gateway's `outbound.proxy` for an in-process engine."""
    return httpx.AsyncClient(transport=guarded_httpx(media_policy(limits)))


async def image_bytes(url: str, param: str, limits: ImageLimits, client: httpx.AsyncClient) -> bytes:
    if url.startswith("data:"):
        return _data_url(url, param, limits)
    if not url.startswith(("http://", "https://")):
        raise bad_request(f"'{param}.url' must be a data: URL or an http(s) URL", param, "invalid_value")
    try:
        for _ in range(MAX_REDIRECTS + 1):  # each hop's host checked: a redirect must not leave the allowed hosts
            _check_host(httpx.URL(url), param, limits)
            async with client.stream("GET", url, timeout=limits.fetch_timeout_s) as response:
                if response.is_redirect and "location" in response.headers:
                    url = str(response.url.join(response.headers["location"]))
                    continue
                return await _body(response, param, limits)
    except (UrlRefused, httpx.HTTPError) as exc:
        refused = refusal_of(exc)
        if refused is not None:
            raise bad_request(f"the image at '{param}.url' may not be fetched by this engine: {refused}", param,
                              "image_url_not_allowed") from None
        raise bad_request(f"could not fetch the image at '{param}.url': {type(exc).__name__}", param,
                          "image_fetch_failed") from None
    raise bad_request(f"fetching the image at '{param}.url' was redirected more than {MAX_REDIRECTS} times", param,
                      "image_fetch_failed")


def _check_host(url: httpx.URL, param: str, limits: ImageLimits) -> None:
    """vLLM's --allowed-media-domains: with a list, only those hosts (exactly as named) are fetched, so a client
    cannot make the engine reach what only it can (a cloud's metadata address, an internal service)."""
    if limits.allowed_domains is not None and url.host.lower() not in limits.allowed_domains:
        raise bad_request(f"the image at '{param}.url' is on {url.host!r}, not a host this engine fetches from "
                          "(--allowed-media-domains)", param, "image_url_not_allowed")
    if url.scheme not in ("http", "https"):
        raise bad_request(f"'{param}.url' was redirected to a {url.scheme}: URL", param, "image_fetch_failed")


async def _body(response: httpx.Response, param: str, limits: ImageLimits) -> bytes:
    if response.status_code != 200:
        raise bad_request(f"fetching the image at '{param}.url' answered HTTP {response.status_code}", param,
                          "image_fetch_failed")
    if int(response.headers.get("content-length") or 0) > limits.max_bytes:
        raise _too_large(param, limits)
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limits.max_bytes:
            raise _too_large(param, limits)
    return bytes(data)


def _data_url(url: str, param: str, limits: ImageLimits) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request(f"'{param}.url' must be a base64 data URL (data:image/png;base64,...)", param,
                          "invalid_value")
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise _too_large(param, limits)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"'{param}.url' is not valid base64", param, "invalid_value") from None


def _too_large(param: str, limits: ImageLimits) -> APIError:
    return bad_request(f"the image at '{param}' is larger than this engine's limit of {limits.max_bytes} bytes",
                       param, "image_too_large")


def decode_image(data: bytes, param: str) -> Image.Image:
    """The picture in RGB; a file Pillow cannot read, of another format, or a decompression bomb is a 400."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            image.seek(0)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise bad_request(f"the image at '{param}' could not be decoded as PNG, JPEG, WebP or GIF "
                          f"({type(exc).__name__})", param, "invalid_image") from None
