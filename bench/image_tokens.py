"""What the gateway's per-deployment image token estimates cost and how far they are from the real counts.

Cost: a chat with one ~1 MB image as a base64 data URL (random pixels, so the file is as large as a photo of its
size: JPEG, PNG and WebP), the time to size and count it as the gateway does (gateway/image_size.py: the data URL's
first 3 KiB decoded, 48 KiB where the header lies further, the header read; gateway/image_tokens.py's rule)
against decoding the picture (the whole payload decoded and Pillow's `load()`: what sizing by pixels would cost),
and the whole `parse_proxy_request` of the chat (sizing included) for scale. Medians of interleaved repetitions,
wall time on one thread.

Error: for a set of image sizes, the old flat 576 against the new estimate from the data URL and from an unsized
http(s) URL (counted as 1024 x 1024), each against the real count: the providers' published rules as litellm
computes them for OpenAI's gpt-4o, gpt-4o-mini and gpt-4.1-mini and Anthropic's Claude (no provider is reachable
from here), Gemini's rule, and Pitstop's engine for Qwen2.5-VL (the checkpoint's own image processor's grid, on a
folder with Qwen2.5-VL's released preprocessing: 14-pixel patches merged 2 x 2 within 3,136 to 1,003,520 pixels).
Reports the mean absolute percentage error per rule. Where the real count is a published rule the gateway
implements, its error from a data URL is zero by construction (it is what tests/gateway/test_image_tokens.py
checks); gpt-4.1-mini differs because litellm 1.110 lets it take 6,144 patches within 2,048 pixels where OpenAI's
vision guide caps its patches at 1,536, which the gateway follows.

    .venv/bin/python -m bench.image_tokens [--reps 30]

Writes bench/results/image_tokens.json."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402

from bench.common import RESULTS, command, machine_info, write_report  # noqa: E402
from gateway.image_size import ImagePart, data_url_size  # noqa: E402
from gateway.image_tokens import (  # noqa: E402
    DEFAULT_IMAGE_TOKENS,
    ImageTokens,
    engine_image_tokens,
    provider_image_tokens,
)
from gateway.request_body import parse_proxy_request  # noqa: E402

OUT = RESULTS / "image_tokens.json"
SIZES = [(256, 256), (512, 512), (768, 1024), (1024, 1024), (1280, 720), (1920, 1080), (2048, 4096), (4032, 3024),
         (300, 3000), (3000, 300)]
PROVIDERS = ("openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-4.1-mini", "anthropic/claude-sonnet-4-5")
NOISE_SIZES = {"JPEG": (1500, 1000), "PNG": (700, 480), "WEBP": (1500, 1000)}  # about 1 MB each


def _data_url(image: Image.Image, format: str) -> str:
    out = io.BytesIO()
    image.save(out, format=format)
    return f"data:image/{format.lower()};base64,{base64.b64encode(out.getvalue()).decode()}"


def _decoded_size(url: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        image.load()
        return image.size


def _median_us(calls: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):  # interleaved, so that the machine's drift falls on all alike
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def cost(reps: int) -> dict:
    rule = provider_image_tokens("openai/gpt-4o")
    report = {}
    for format, size in NOISE_SIZES.items():
        url = _data_url(Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)), format)
        chat = {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
        assert data_url_size(url) == _decoded_size(url) == size
        medians = _median_us({
            "header_read_and_count": lambda url=url: rule.tokens(ImagePart(data_url_size(url))),
            "full_decode_and_count": lambda url=url: rule.tokens(ImagePart(_decoded_size(url))),
            "parse_proxy_request": lambda chat=chat: parse_proxy_request(chat, "chat", Headers()),
        }, reps)
        report[format] = {"data_url_bytes": len(url), "size": size, "median_us": medians,
                          "decode_over_header": medians["full_decode_and_count"] / medians["header_read_and_count"]}
    return report


def _qwen_counts(folder: Path) -> tuple[ImageTokens, list[int]]:
    """Qwen2.5-VL's rule from a folder and its processor's counts for SIZES (the engine's own preprocessing)."""
    from engine.openai_images import image_processor
    from engine.tiny_qwen2_5_vl import make_tiny_qwen2_5_vl

    model_dir = make_tiny_qwen2_5_vl(folder, patch_size=14, max_pixels=28 * 28 * 1280)
    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    config["min_pixels"] = 56 * 56  # the released checkpoints' bounds
    (model_dir / "preprocessor_config.json").write_text(json.dumps(config))
    processor = image_processor(model_dir)
    counts = []
    for size in SIZES:  # one at a time: the processor holds a picture's patches in memory
        grid = processor(images=[Image.new("RGB", size, (90, 120, 200))], return_tensors="pt")["image_grid_thw"][0]
        counts.append(int(grid.prod()) // 4)
    return engine_image_tokens(model_dir), counts


def _errors(real: list[int], estimates: list[int]) -> float:
    return statistics.fmean(abs(e - r) / r for e, r in zip(estimates, real, strict=True))


def error() -> dict:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.litellm_core_utils.token_counter import estimate_image_tokens

    urls = [_data_url(Image.new("RGB", size, (200, 30, 90)), "PNG") for size in SIZES]
    rules: dict[str, tuple[ImageTokens, list[int]]] = {
        model: (provider_image_tokens(model), [estimate_image_tokens(model, url, "auto") for url in urls])
        for model in PROVIDERS}
    gemini = provider_image_tokens("gemini/gemini-2.0-flash")
    rules["gemini/gemini-2.0-flash"] = (gemini, [gemini.tokens(ImagePart(size)) for size in SIZES])  # its own rule
    with tempfile.TemporaryDirectory() as folder:
        rules["pitstop-local/qwen2.5-vl"] = _qwen_counts(Path(folder) / "qwen")
    report = {}
    for name, (rule, real) in rules.items():
        sized = [rule.tokens(ImagePart(data_url_size(url))) for url in urls]
        unsized = [rule.tokens(ImagePart(None)) for _ in urls]
        report[name] = {"real": dict(zip(map(str, SIZES), real, strict=True)),
                        "mean_abs_pct_error": {"old_576": _errors(real, [DEFAULT_IMAGE_TOKENS] * len(real)),
                                               "new_data_url": _errors(real, sized),
                                               "new_http_url_unsized": _errors(real, unsized)}}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    report = {"command": command("bench.image_tokens", argv), "machine": machine_info(), "sizes": SIZES,
              "cost": cost(args.reps), "error": error()}
    write_report(OUT, report)
    print(json.dumps({"cost": {f: {k: v for k, v in r.items() if k != "size"} for f, r in report["cost"].items()},
                      "error": {n: r["mean_abs_pct_error"] for n, r in report["error"].items()}}, indent=2))
    return report


if __name__ == "__main__":
    main()
