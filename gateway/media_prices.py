"""What audio and images cost: a deployment's unit prices, from its model_info (litellm's field names:
`input_cost_per_second` for a transcription's audio, `input_cost_per_character` for a speech's text,
`output_cost_per_image` or `input_cost_per_pixel` for an image, generated or edited), else from litellm's bundled price map (read
as JSON, without importing litellm: gateway/price_map.py), where it lists the model
(whisper-1 at $0.0001 a second, tts-1 at $0.000015 a character; an image's price under
`{quality}/{size}/{model}` or `{size}/{model}`, as litellm's image cost calculator looks it up). A model
neither prices costs nothing but the tokens its provider reports, at its per-token prices.

A transcription's seconds are the provider's `duration` (verbose_json gives it), else the WAV header's
(gateway/audio_upload.py), else an estimate from the file's size at 128 kbit/s (an mp3's usual rate; the
row says `extra.duration_estimated`)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.deployments import Deployment, DeploymentPool
from gateway.media_request import MediaRequest, image_pixels
from gateway.price_map import price_map

ESTIMATED_BYTES_A_SECOND = 16_000  # 128 kbit/s
DEFAULT_SIZE = "1024x1024"  # OpenAI's default image size
# The unit each kind is billed by, and the outcome row's extra key that holds how many it had.
UNIT = {"transcription": "seconds", "translation": "seconds", "speech": "characters", "image": "images",
        "image_edit": "images"}


def _listed(key: str) -> dict[str, Any]:
    listed = price_map().get(key)  # the bundled map, as per-token prices are (gateway/price_map.py)
    return listed if isinstance(listed, dict) else {}


def _map_price(provider_model: str, field: str, prefixes: tuple[str, ...] = ("",)) -> float | None:
    bare = provider_model.split("/", 1)[-1]
    for prefix in prefixes:
        for name in (f"{prefix}{provider_model}", f"{prefix}{bare}"):
            price = _listed(name).get(field)
            if isinstance(price, int | float):
                return float(price)
    return None


def unit_price(deployment: Deployment, request: MediaRequest) -> float:
    """The price of one unit (a second, a character, an image) on `deployment`: model_info's, else litellm's.
    Reads litellm's map on first use of a model: call off the event loop."""
    info, model = deployment.info, deployment.provider_model
    if request.kind in ("transcription", "translation"):
        own = info.input_cost_per_second
        return own if own is not None else _map_price(model, "input_cost_per_second") or 0.0
    if request.kind == "speech":
        own = info.input_cost_per_character
        return own if own is not None else _map_price(model, "input_cost_per_character") or 0.0
    size = request.body.get("size") if request.body.get("size") not in (None, "auto") else DEFAULT_SIZE
    pixels = image_pixels(size) or 0
    if info.output_cost_per_image is not None or info.input_cost_per_pixel is not None:
        return (info.output_cost_per_image or 0.0) + (info.input_cost_per_pixel or 0.0) * pixels
    listed = size.replace("x", "-x-") + "/"
    quality = request.body.get("quality")
    prefixes = (*((f"{quality}/{listed}",) if isinstance(quality, str) else ()), listed, "")
    per_image = _map_price(model, "output_cost_per_image", prefixes)
    if per_image is not None:
        return per_image
    return (_map_price(model, "input_cost_per_pixel", prefixes) or 0.0) * pixels


def estimated_units(request: MediaRequest) -> float:
    """The units a request is held for before its call: known (characters, images, a WAV's seconds), or a
    transcription's seconds estimated from its file's size."""
    if request.units is not None:
        return request.units
    return len(request.body["file"].content) / ESTIMATED_BYTES_A_SECOND


async def worst_cost(pool: DeploymentPool, request: MediaRequest) -> float:
    """What the request may cost on the costliest deployment of its model: its budget hold."""
    deployments = pool.by_model.get(request.model, ())
    prices = await asyncio.to_thread(lambda: [unit_price(d, request) for d in deployments])
    return max(prices, default=0.0) * estimated_units(request)


def answered_units(request: MediaRequest, answer: dict) -> tuple[float, bool]:
    """(the units the answer is billed for, whether they are estimated): a transcription's provider duration,
    else the file's; an image generation's images returned; a speech's characters."""
    if request.kind in ("image", "image_edit"):
        return float(len(answer.get("data") or ())), False
    if request.kind == "speech":
        return float(len(request.text)), False
    duration = answer.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool) and duration >= 0:
        return float(duration), False
    return estimated_units(request), request.units is None


async def answered_cost(deployment: Deployment, request: MediaRequest, units: float) -> float:
    return await asyncio.to_thread(unit_price, deployment, request) * units
