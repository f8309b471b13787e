"""Tiny LLaVA folders, pictures and prompts for the image-input tests, and greedy answers from transformers'
LlavaForConditionalGeneration on the same checkpoint to compare with."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import torch
from PIL import Image

from engine.config import EngineConfig
from engine.image_inputs import ImageInput, content_hash, expand_image_tokens
from engine.llm_engine import LLMEngine
from engine.model.vision import VisionConfig
from engine.openai_images import image_processor
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner

IMAGE_SIZE = 56  # 4 x 4 patches of 14: 16 feature tokens an image (CLS dropped)
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Random coloured noise: two seeds, two pictures the model tells apart."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


def data_url(image: Image.Image, format: str = "PNG") -> str:
    return f"data:image/{format.lower()};base64,{base64.b64encode(png_bytes(image, format)).decode()}"


def image_prompt(model_dir: Path, before: str, pictures: list[Image.Image], after: str = " what is it?"
                 ) -> tuple[list[int], list[ImageInput]]:
    """`before`, one image token per picture, `after`: widened to the features' tokens, as the server does."""
    tokenizer = Tokenizer(model_dir)
    vision = VisionConfig.from_dict(__import__("json").loads((model_dir / "config.json").read_text()))
    assert vision is not None
    ids = tokenizer.encode(before) + [vision.image_token_id] * len(pictures) + tokenizer.encode(after)
    pixels = list(image_processor(model_dir)(images=pictures, return_tensors="pt")["pixel_values"])
    hashes = [content_hash(p.mode, p.size, p.tobytes()) for p in pictures]
    return expand_image_tokens(ids, vision.image_token_id, vision.tokens_per_image, hashes, pixels)


def llava_engine(model_dir: Path, chunk: int = 512, num_blocks: int = 64, num_host_blocks: int = 0,
                 **config: object) -> LLMEngine:
    runner = TorchModelRunner(model_dir, num_blocks, 16, device="cpu", num_host_blocks=num_host_blocks)
    return LLMEngine(EngineConfig(num_blocks=num_blocks, max_model_len=512, long_prefill_token_threshold=chunk,
                                  num_host_blocks=num_host_blocks, **config), runner)  # type: ignore[arg-type]


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], list[ImageInput]]],
        params: SamplingParams = GREEDY) -> dict[str, RequestOutput]:
    """Every request added at once, stepped to the end: each one's last output, its tokens all."""
    for request_id, (ids, images) in requests.items():
        engine.add_request(request_id, ids, params, images=images)
    tokens: dict[str, list[int]] = {r: [] for r in requests}
    scored: dict[str, list] = {}
    logprobs: dict[str, list] = {r: [] for r in requests}
    last: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            logprobs[out.request_id] += out.logprobs or []
            if out.prompt_logprobs is not None:  # with the first token
                scored[out.request_id] = out.prompt_logprobs
            if out.finished:
                out.new_token_ids, out.prompt_logprobs = tokens[out.request_id], scored.get(out.request_id)
                out.logprobs = logprobs[out.request_id]
                last[out.request_id] = out
    return last


def transformers_answer(model_dir: Path, ids: list[int], images: list[ImageInput], max_new_tokens: int = 8
                        ) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy answer and its prompt's logits [T, vocab]."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}  # BOS is 0
    if images:
        inputs["pixel_values"] = torch.stack([image.pixel_values for image in images])
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist(), logits
