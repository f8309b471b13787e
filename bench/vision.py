"""Image inputs on Pitstop's engine, side by side in one run on one machine: the prefill of a request with an
image against the same number of text tokens, the vision encoder's share of it, and the same image again
served from the prefix cache (the encoder skipped). A small random LLaVA on the CPU (LLaVA-1.5's image shape:
336-pixel images in 14-pixel patches, 576 feature tokens; a narrower CLIP tower and Llama), built locally.
Timed in CPU time on one torch thread (the process's, so other work on a shared machine moves it little),
the kinds interleaved run by run; medians, and the median of each run's image / text ratio.

`--family gemma3`: a small random Gemma 3 with images instead (Gemma3ForConditionalGeneration: a SigLIP tower
on 448-pixel images in 14-pixel patches, its 32 x 32 patches average-pooled to 256 tokens as Gemma 3's 896-pixel
64 x 64 are; a Gemma 3 language model, every second layer a 512-token window), the image widened in the text and
its tokens attending to each other both ways.

`--family qwen2_5_vl`: a small random Qwen2.5-VL (transformers' vision transformer, window attention and the
patch merger, on 14-pixel patches; a Qwen2 language model on M-RoPE): a 448 x 448 picture is a 32 x 32 patch grid,
256 tokens after the 2 x 2 merge (dynamic resolution: another size, another count).

`--family qwen3_vl`: a small random Qwen3-VL (transformers' Qwen3VLVisionModel on 16-pixel patches, as the
releases': a 448 x 448 picture is 28 x 28 patches, 196 tokens after the 2 x 2 merge; DeepStack features from its
first 3 blocks added after the first 3 layers of a Qwen3 language model on interleaved M-RoPE).

    .venv/bin/python -m bench.vision --out bench/results/vision.json
    .venv/bin/python -m bench.vision --family gemma3 --out bench/results/vision_gemma3.json
    .venv/bin/python -m bench.vision --family qwen2_5_vl --out bench/results/vision_qwen2_5_vl.json
    .venv/bin/python -m bench.vision --family qwen3_vl --out bench/results/vision_qwen3_vl.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import command, machine_info, write_report
from engine.config import EngineConfig
from engine.image_inputs import ImageInput, content_hash, expand_image_tokens, image_runs, widen_image_text
from engine.llm_engine import LLMEngine
from engine.model.vision import VisionConfig
from engine.openai_images import image_processor
from engine.sampling_params import SamplingParams
from engine.tiny_gemma3_vision import make_tiny_gemma3_vision
from engine.tiny_llava import make_tiny_llava
from engine.tiny_qwen2_5_vl import make_tiny_qwen2_5_vl
from engine.tiny_qwen3_vl import make_tiny_qwen3_vl
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner

FIRST_TOKEN = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)


def _picture(seed: int, size: int = 400) -> object:
    from PIL import Image

    rng = random.Random(seed)
    return Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))


def _prefill_s(engine: LLMEngine, ids: list[int], images: list[ImageInput], name: str) -> tuple[float, int]:
    """CPU seconds from admission to the first token (the whole prompt in one step), and its cached tokens."""
    engine.add_request(name, ids, FIRST_TOKEN, images=images)
    start = time.process_time()
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                return time.process_time() - start, out.num_cached_tokens
    raise AssertionError("no output")


def _model(family: str, out: str, args: argparse.Namespace) -> Path:
    if family == "qwen2_5_vl":
        return make_tiny_qwen2_5_vl(out, hidden=args.hidden, layers=args.layers, heads=8, kv_heads=4, vocab_size=2048,
                                    patch_size=14, vision_hidden=args.vision_hidden, vision_depth=args.vision_layers,
                                    window_size=112, max_pixels=448 * 448)
    if family == "qwen3_vl":
        return make_tiny_qwen3_vl(out, hidden=args.hidden, layers=args.layers, heads=8, kv_heads=4, vocab_size=2048,
                                  patch_size=16, vision_hidden=args.vision_hidden, vision_depth=args.vision_layers,
                                  deepstack=min(3, args.vision_layers), max_pixels=448 * 448)
    if family == "gemma3":
        return make_tiny_gemma3_vision(out, hidden=args.hidden, layers=args.layers, heads=8, kv_heads=4,
                                       head_dim=args.hidden // 8, vocab_size=2048, image_size=448, patch_size=14,
                                       tokens_per_image=256, vision_hidden=args.vision_hidden,
                                       vision_layers=args.vision_layers, sliding_window=512)
    return make_tiny_llava(out, hidden=args.hidden, layers=args.layers, heads=8, kv_heads=4, vocab_size=2048,
                           image_size=336, patch_size=14, vision_hidden=args.vision_hidden,
                           vision_layers=args.vision_layers)


def _prompt(vision: VisionConfig, tokenizer: Tokenizer, before: str, after: str, hashes: list[int],
            pixels: list[torch.Tensor], grids: list | None) -> tuple[list[int], list[ImageInput]]:
    """As the server builds it: Gemma 3's image widened in the text, LLaVA's and Qwen2.5-VL's image token in the
    ids (Qwen's by its grid's count)."""
    if vision.text_expansion:
        names = [tokenizer.id_to_token(i) for i in (vision.boi_token_id, vision.image_token_id, vision.eoi_token_id)]
        ids = tokenizer.encode(widen_image_text(before + names[0] + after, *names, vision.tokens_per_image))  # type: ignore[arg-type]
        images = image_runs(ids, vision.image_token_id, vision.tokens_per_image, hashes, pixels)
        assert images is not None
        return ids, images
    ids = tokenizer.encode(before) + [vision.image_token_id] + tokenizer.encode(after)
    if grids is not None:
        counts = [t * h * w // vision.merge_size**2 for t, h, w in grids]
        return expand_image_tokens(ids, vision.image_token_id, counts, hashes, pixels, grids)
    return expand_image_tokens(ids, vision.image_token_id, vision.tokens_per_image, hashes, pixels)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="requests of each kind (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--family", choices=["llava", "gemma3", "qwen2_5_vl", "qwen3_vl"], default="llava")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vision.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model(args.family, tmp, args)
        runner = TorchModelRunner(model_dir, 512, 16, device="cpu")
        engine = LLMEngine(EngineConfig(num_blocks=512, max_model_len=2048, max_num_batched_tokens=2048,
                                        long_prefill_token_threshold=2048), runner)
        vision = runner.vision
        features = runner.image_features
        assert vision is not None and features is not None
        tokenizer = Tokenizer(model_dir)
        before = "A user asks about this screenshot: "
        after = " What does the dialog on the screen say, and which button should be pressed?"
        rng = random.Random(0)
        rows: dict[str, list[float]] = {"image": [], "text": [], "repeat": [], "encoder": [], "preprocess": []}
        cached: list[int] = []
        for run in range(args.runs + 1):  # the first of each kind warms up, and is dropped
            picture = _picture(run, 448 if vision.dynamic_resolution else 400)
            start = time.process_time()
            processed = image_processor(model_dir)(images=[picture], return_tensors="pt")
            preprocess = time.process_time() - start
            grids = [tuple(int(n) for n in processed["image_grid_thw"][0])] if vision.dynamic_resolution else None
            ids, images = _prompt(vision, tokenizer, before, after,
                                  [content_hash("RGB", picture.size, picture.tobytes())],
                                  [processed["pixel_values"] if grids else processed["pixel_values"][0]], grids)
            start = time.process_time()
            with torch.inference_mode():
                features.encoder.encode(images, runner.device, runner.dtype)
            encoder = time.process_time() - start
            encoded = features.images_encoded
            image, _ = _prefill_s(engine, ids, images, f"image-{run}")
            text, _ = _prefill_s(engine, [rng.randrange(4, 2000) for _ in ids], [], f"text-{run}")
            repeat, hit = _prefill_s(engine, ids, images, f"repeat-{run}")
            assert features.images_encoded == encoded + 1, "the repeat ran the encoder"
            if run:
                for name, value in (("image", image), ("text", text), ("repeat", repeat), ("encoder", encoder),
                                    ("preprocess", preprocess)):
                    rows[name].append(value)
                cached.append(hit)
    ms = {name: 1000 * statistics.median(values) for name, values in rows.items()}
    ratio = statistics.median(i / t for i, t in zip(rows["image"], rows["text"], strict=True))
    report = {
        "command": command("bench.vision", argv),
        "machine": machine_info(),
        "settings": {"runs": args.runs, "prompt_tokens": len(ids), "image_tokens": images[0].length,
                     "image_size": vision.image_size or picture.size[0], "language_model": {"hidden": args.hidden, "layers": args.layers},
                     "family": args.family, "bidirectional_image_attention": vision.bidirectional,
                     "vision_tower": {"kind": vision.vision.get("model_type"), "hidden": args.vision_hidden,
                                      "layers": args.vision_layers},
                     "device": "cpu", "dtype": "float32", "threads": args.threads, "clock": "process CPU time"},
        "results": {
            "image_prefill_ms": ms["image"],
            "text_prefill_ms_same_tokens": ms["text"],
            "image_over_text_prefill": ratio,
            "encoder_ms": ms["encoder"],
            "encoder_share_of_image_prefill": ms["encoder"] / ms["image"],
            "preprocess_ms": ms["preprocess"],
            "repeat_image_prefill_ms": ms["repeat"],
            "repeat_cached_tokens": statistics.median(cached),
            "repeat_encoder_runs": 0,
        },
        "runs_ms": {name: [1000 * v for v in values] for name, values in rows.items()},
    }
    write_report(args.out, report)
    print(f"wrote {args.out}: {report['results']}")
    return report


if __name__ == "__main__":
    main()
