"""Prompts with images for the tiny Gemma 3 (engine/tiny_gemma3_vision.py) as the server builds them (the
placeholder widened in the text, then encoded, then each image's run found), checked against transformers'
Gemma3Processor, and transformers' Gemma3ForConditionalGeneration answers on the same checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image

from engine.config import EngineConfig
from engine.image_inputs import ImageInput, content_hash, image_runs, widen_image_text
from engine.llm_engine import LLMEngine
from engine.model.vision import VisionConfig
from engine.openai_images import image_processor
from engine.tiny_gemma3_vision import BOI, EOI, IMAGE
from engine.tiny_model import BOS
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """4 x 4 blocks of random colours: Gemma 3's projector averages patches, so noise finer than its pooled cells
    would look alike from seed to seed."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (4, 4), bytes(rng.randrange(256) for _ in range(48))).resize(size, Image.NEAREST)


def vision_config(model_dir: Path) -> VisionConfig:
    vision = VisionConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    assert vision is not None
    return vision


def gemma3_prompt(model_dir: Path, before: str, pictures: list[Image.Image], after: str = " what is it?"
                  ) -> tuple[list[int], list[ImageInput]]:
    """BOS, `before`, a placeholder a picture, `after`: widened and encoded as the server does; the ids are
    Gemma3Processor's for the same text."""
    from transformers import AutoProcessor

    vision = vision_config(model_dir)
    text = BOS + before + BOI * len(pictures) + after
    ids = Tokenizer(model_dir).encode(widen_image_text(text, BOI, IMAGE, EOI, vision.tokens_per_image))
    pixels = list(image_processor(model_dir)(images=pictures, return_tensors="pt")["pixel_values"])
    hashes = [content_hash(p.mode, p.size, p.tobytes()) for p in pictures]
    images = image_runs(ids, vision.image_token_id, vision.tokens_per_image, hashes, pixels)
    assert images is not None
    reference = AutoProcessor.from_pretrained(model_dir, local_files_only=True)(
        text=[text], images=[pictures] if pictures else None, return_tensors="pt")
    assert reference["input_ids"][0].tolist() == ids
    if pictures:
        torch.testing.assert_close(reference["pixel_values"], torch.stack(pixels))
    return ids, images


def gemma3_engine(model_dir: Path, chunk: int = 512, max_num_batched_tokens: int = 2048, num_blocks: int = 64,
                  **config: object) -> LLMEngine:
    runner = TorchModelRunner(model_dir, num_blocks, 16, device="cpu")
    return LLMEngine(EngineConfig(num_blocks=num_blocks, max_model_len=512, long_prefill_token_threshold=chunk,
                                  max_num_batched_tokens=max_num_batched_tokens, **config), runner)  # type: ignore[arg-type]


def transformers_answer(model_dir: Path, ids: list[int], images: list[ImageInput], max_new_tokens: int = 8,
                        bidirectional: bool = True) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy answer and its prompt's logits [T, vocab]. `bidirectional=False` leaves out the
    token types, so transformers masks images causally (what the tests tell apart)."""
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs: dict[str, torch.Tensor] = {"input_ids": torch.tensor([ids]),
                                       "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if images:
        inputs["pixel_values"] = torch.stack([image.pixel_values for image in images])
        if bidirectional:
            image_token = vision_config(model_dir).image_token_id
            inputs["token_type_ids"] = (inputs["input_ids"] == image_token).long()
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist(), logits
