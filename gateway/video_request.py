"""A video's create (`POST /v1/videos`, JSON or multipart with an `input_reference` image: OpenAI's SDK always
sends multipart) and remix bodies, checked as OpenAI checks them, and what a second of video costs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request
from gateway.audio_upload import UploadedFile
from gateway.deployments import Deployment
from gateway.media_prices import _map_price
from gateway.media_request import MediaRequest
from gateway.request_body import asked_priority

SECONDS = ("4", "8", "12")  # OpenAI's clip lengths
SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
DEFAULT_MODEL, DEFAULT_SECONDS, DEFAULT_SIZE = "sora-2", "4", "720x1280"  # OpenAI's, where a request names none
MAX_PROMPT_CHARS = 32_000
VARIANTS = ("video", "thumbnail", "spritesheet")


@dataclass(frozen=True)
class VideoRequest:
    model: str
    body: dict[str, Any]  # what the upstream is sent: `input_reference` an UploadedFile where one came
    prompt: str
    seconds: int
    size: str
    priority: float | None

    def as_media(self) -> MediaRequest:
        """As the other media requests are limited and logged (its prompt as the row's text)."""
        return MediaRequest("video", self.model, self.body, self.prompt, self.priority, float(self.seconds))


def _prompt(raw: Mapping[str, Any]) -> str:
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("'prompt' is required: a non-empty string", "prompt", "missing_required_parameter")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"'prompt' holds {len(prompt)} characters; at most {MAX_PROMPT_CHARS}", "prompt",
                          "invalid_value")
    return prompt


def parse_video(raw: Any, reference: UploadedFile | None) -> VideoRequest:
    """A create's fields (a JSON object, or a multipart form's), its reference image read."""
    if not isinstance(raw, Mapping):
        raise bad_request("the body must be a JSON object or a multipart form")
    model = raw.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string", "model", "invalid_type")
    prompt = _prompt(raw)
    seconds = raw.get("seconds", DEFAULT_SECONDS)
    seconds = str(seconds) if isinstance(seconds, int) and not isinstance(seconds, bool) else seconds
    if seconds not in SECONDS:
        raise bad_request(f"'seconds' must be one of {', '.join(SECONDS)}, not {raw.get('seconds')!r}", "seconds",
                          "invalid_value")
    size = raw.get("size", DEFAULT_SIZE)
    if size not in SIZES:
        raise bad_request(f"'size' must be one of {', '.join(SIZES)}, not {size!r}", "size", "invalid_value")
    if "input_reference" in raw and reference is None:
        raise bad_request("'input_reference' must be an image file, as a multipart file part", "input_reference",
                          "invalid_type")
    body: dict[str, Any] = {"model": model, "prompt": prompt, "seconds": seconds, "size": size}
    if reference is not None:
        body["input_reference"] = reference
    return VideoRequest(model, body, prompt, int(seconds), size, asked_priority(dict(raw)))


def parse_remix(raw: Any) -> str:
    """A remix's prompt."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    return _prompt(raw)


def second_price(deployment: Deployment) -> float:
    """What a second of video costs on `deployment`: model_info's (litellm's names), else litellm's price map's
    (sora-2: $0.10). Reads the map on first use of a model: call off the event loop."""
    info = deployment.info
    own = info.output_cost_per_video_per_second
    if own is None:
        own = info.output_cost_per_second
    if own is not None:
        return own
    listed = _map_price(deployment.provider_model, "output_cost_per_video_per_second")
    return listed if listed is not None else _map_price(deployment.provider_model, "output_cost_per_second") or 0.0
