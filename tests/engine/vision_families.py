"""The three vision families' tiny folders (their conftest fixtures) and a batch of image and text requests for
each, for the tests that serve all three alike (tensor parallelism, quantization)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.image_inputs import ImageInput
from tests.engine import gemma3_vision_inputs, llava_inputs, qwen2_5_vl_inputs

Requests = dict[str, tuple[list[int], list[ImageInput]]]


def llava_requests(model_dir: Path) -> Requests:
    prompt, picture = llava_inputs.image_prompt, llava_inputs.picture
    return {"image": prompt(model_dir, "Look at this picture, carefully, please: ", [picture(1)]),
            "text": prompt(model_dir, "No picture here, only words to answer. ", []),
            "two": prompt(model_dir, "Compare ", [picture(2), picture(3)], " and tell.")}


def gemma3_requests(model_dir: Path) -> Requests:
    prompt, picture = gemma3_vision_inputs.gemma3_prompt, gemma3_vision_inputs.picture
    return {"image": prompt(model_dir, "Look at this picture, carefully: ", [picture(1)]),
            "text": prompt(model_dir, "No picture here, only words to answer.", [])}


def qwen_requests(model_dir: Path) -> Requests:
    prompt, picture = qwen2_5_vl_inputs.qwen_prompt, qwen2_5_vl_inputs.picture
    return {"image": prompt(model_dir, "Look at this picture: ", [picture(1, (48, 40))]),
            "text": prompt(model_dir, "No picture here, only words to answer.", []),
            "two": prompt(model_dir, "Compare", [picture(2), picture(3, (40, 16))])}


# family -> (its folder's fixture, its requests)
FAMILIES: dict[str, tuple[str, Callable[[Path], Requests]]] = {
    "llava": ("tiny_llava_dir", llava_requests), "gemma3": ("tiny_gemma3_vision_dir", gemma3_requests),
    "qwen2_5_vl": ("tiny_qwen2_5_vl_dir", qwen_requests)}
