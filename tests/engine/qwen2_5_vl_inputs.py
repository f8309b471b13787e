"""Prompts with images for the tiny Qwen2.5-VL (engine/tiny_qwen2_5_vl.py) as the server builds them (each
`<|image_pad|>` widened to its image's merged-grid tokens, the pixels split by grid), checked against
Qwen2_5_VLProcessor's text widening, and transformers' Qwen2_5_VLForConditionalGeneration answers on the same
checkpoint (its own M-RoPE positions from `get_rope_index`)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from engine.config import EngineConfig
from engine.image_inputs import ImageInput, content_hash, expand_image_tokens
from engine.llm_engine import LLMEngine
from engine.openai_images import image_processor
from engine.tiny_model import BOS
from engine.tiny_qwen2_5_vl import IMAGE_PAD, VISION_END, VISION_START
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.gemma3_vision_inputs import vision_config


def picture(seed: int, size: tuple[int, int] = (32, 24)) -> Image.Image:
    """4 x 3 blocks of random colours (pixel noise is much alike to the tiny tower from seed to seed); 32 x 24 is
    an 8 x 6 grid of 4-pixel patches, 12 tokens after the 2 x 2 merge."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (4, 3), bytes(rng.randrange(256) for _ in range(36))).resize(size, Image.NEAREST)


def qwen_prompt(model_dir: Path, before: str, pictures: list[Image.Image], after: str = " what is it?"
                ) -> tuple[list[int], list[ImageInput]]:
    """BOS, `before`, a vision block a picture, `after`: widened as the server does; the ids are
    Qwen2_5_VLProcessor's for the same text."""
    vision = vision_config(model_dir)
    text = BOS + before + (VISION_START + IMAGE_PAD + VISION_END) * len(pictures) + after
    ids = Tokenizer(model_dir).encode(text)
    images: list[ImageInput] = []
    if pictures:
        processed = image_processor(model_dir)(images=pictures, return_tensors="pt")
        grids = [tuple(int(n) for n in grid) for grid in processed["image_grid_thw"]]
        pixels = list(processed["pixel_values"].split([t * h * w for t, h, w in grids]))
        hashes = [content_hash(p.mode, p.size, p.tobytes()) for p in pictures]
        counts = [t * h * w // vision.merge_size**2 for t, h, w in grids]
        ids, images = expand_image_tokens(ids, vision.image_token_id, counts, hashes, pixels, grids)  # type: ignore[arg-type]
    # Qwen2_5_VLProcessor's widening (its class needs torchvision for videos): each `<|image_pad|>` in the text
    # repeated grid_t * grid_h * grid_w / merge_size**2 times, then encoded.
    widened = text
    for image in images:
        widened = widened.replace(VISION_START + IMAGE_PAD, VISION_START + "\0" * image.length, 1)
    assert Tokenizer(model_dir).encode(widened.replace("\0", IMAGE_PAD)) == ids
    return ids, images


def qwen_engine(model_dir: Path, chunk: int = 512, num_blocks: int = 64, **config: object) -> LLMEngine:
    runner = TorchModelRunner(model_dir, num_blocks, 16, device="cpu")
    return LLMEngine(EngineConfig(num_blocks=num_blocks, max_model_len=512, long_prefill_token_threshold=chunk,
                                  **config), runner)  # type: ignore[arg-type]


def transformers_answer(model_dir: Path, ids: list[int], images: list[ImageInput], max_new_tokens: int = 8
                        ) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy answer and its prompt's logits [T, vocab]."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = torch.tensor([ids])
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if images:
        inputs["pixel_values"] = torch.cat([image.pixel_values for image in images])
        inputs["image_grid_thw"] = torch.tensor([image.grid_thw for image in images])
        inputs["mm_token_type_ids"] = (input_ids == vision_config(model_dir).image_token_id).int()
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        model.model.rope_deltas = None  # the forward above left its own
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist(), logits
