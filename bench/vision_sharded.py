"""Image inputs on a sharded or quantized engine, side by side in one run on one machine: the prefill of a
request with an image on one rank, on two tensor-parallel CPU ranks (rank 0 runs the vision encoder, the one copy,
and sends the features with the step), and on one rank with the language model W8A8 (`--quantization int8`; the
tower and projector stay float32). The small random models of bench/vision.py (LLaVA by default: 336-pixel images,
576 feature tokens; `--family gemma3|qwen2_5_vl`), built locally; a new picture each run, so each prefill runs
the encoder, and beside it a text prompt of as many tokens (what the image adds: the encoder's time, the same
float32 tower on every engine). The engines take turns run by run; wall-clock time (two ranks are two
processes), medians, and the median of each run's ratio to one rank's. Each image prompt's first token is checked
against one rank's (two ranks: equal).

    .venv/bin/python -m bench.vision_sharded --out bench/results/vision_sharded.json
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
from bench.vision import _model, _picture, _prompt
from engine.config import EngineConfig
from engine.image_inputs import ImageInput, content_hash
from engine.llm_engine import LLMEngine
from engine.openai_images import image_processor
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner

FIRST_TOKEN = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
ENGINES = {"one rank": {}, "two ranks": {"tensor_parallel_size": 2}, "one rank, int8 W8A8": {"quantization": "int8"}}


def _prefill(engine: LLMEngine, ids: list[int], images: list[ImageInput], name: str) -> tuple[float, int]:
    """Wall seconds from admission to the first token (the whole prompt in one step), and that token."""
    engine.add_request(name, ids, FIRST_TOKEN, images=images)
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                return time.perf_counter() - start, out.new_token_ids[0]
    raise AssertionError("no output")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="requests on each engine (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads a rank")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--family", choices=["llava", "gemma3", "qwen2_5_vl"], default="llava")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vision_sharded.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model(args.family, tmp, args)
        runners = {name: TorchModelRunner(model_dir, 256, 16, device="cpu", **options)  # type: ignore[arg-type]
                   for name, options in ENGINES.items()}
        try:
            engines = {name: LLMEngine(EngineConfig(num_blocks=256, max_model_len=2048, max_num_batched_tokens=2048,
                                                    long_prefill_token_threshold=2048), runner)
                       for name, runner in runners.items()}
            vision = runners["one rank"].vision
            assert vision is not None
            tokenizer = Tokenizer(model_dir)
            rows: dict[str, list[float]] = {name: [] for name in ENGINES}
            text_rows: dict[str, list[float]] = {name: [] for name in ENGINES}
            rng = random.Random(0)
            same_first_token = {name: 0 for name in ENGINES}
            for run in range(args.runs + 1):  # the first warms up, and is dropped
                picture = _picture(run, 448 if vision.dynamic_resolution else 400)
                processed = image_processor(model_dir)(images=[picture], return_tensors="pt")
                grids = [tuple(int(n) for n in processed["image_grid_thw"][0])] if vision.dynamic_resolution else None
                ids, images = _prompt(vision, tokenizer, "A user asks about this screenshot: ",
                                      " What does the dialog on the screen say, and which button should be pressed?",
                                      [content_hash("RGB", picture.size, picture.tobytes())],
                                      [processed["pixel_values"] if grids else processed["pixel_values"][0]], grids)
                tokens = {}
                text = [rng.randrange(4, 2000) for _ in ids]
                for name, engine in engines.items():
                    seconds, tokens[name] = _prefill(engine, ids, images, f"{name}-{run}")
                    text_seconds, _ = _prefill(engine, text, [], f"{name}-text-{run}")
                    if run:
                        rows[name].append(seconds)
                        text_rows[name].append(text_seconds)
                for name in ENGINES:
                    same_first_token[name] += tokens[name] == tokens["one rank"]
            assert same_first_token["two ranks"] == args.runs + 1, "two ranks answered otherwise than one"
        finally:
            for runner in runners.values():
                runner.close()
    ms = {name: 1000 * statistics.median(values) for name, values in rows.items()}
    text_ms = {name: 1000 * statistics.median(values) for name, values in text_rows.items()}
    text_ratio = {name: statistics.median(a / b for a, b in zip(text_rows[name], text_rows["one rank"], strict=True))
                  for name in ENGINES}
    extra_ms = {name: 1000 * statistics.median(i - t for i, t in zip(rows[name], text_rows[name], strict=True))
                for name in ENGINES}
    ratio = {name: statistics.median(a / b for a, b in zip(rows[name], rows["one rank"], strict=True))
             for name in ENGINES}
    report = {
        "command": command("bench.vision_sharded", argv),
        "machine": machine_info(),
        "settings": {"runs": args.runs, "prompt_tokens": len(ids), "image_tokens": images[0].length,
                     "family": args.family, "language_model": {"hidden": args.hidden, "layers": args.layers},
                     "vision_tower": {"kind": vision.vision.get("model_type"), "hidden": args.vision_hidden,
                                      "layers": args.vision_layers},
                     "engines": ENGINES, "device": "cpu", "dtype": "float32", "threads_a_rank": args.threads,
                     "clock": "wall"},
        "results": {"image_prefill_ms": ms, "over_one_rank": ratio, "text_prefill_ms_same_tokens": text_ms,
                    "text_over_one_rank": text_ratio,
                    "image_extra_ms": extra_ms,
                    "first_token_same_as_one_rank": {n: f"{k}/{args.runs + 1}" for n, k in same_first_token.items()}},
        "runs_ms": {name: [1000 * v for v in values] for name, values in rows.items()},
        "text_runs_ms": {name: [1000 * v for v in values] for name, values in text_rows.items()},
    }
    write_report(args.out, report)
    print(f"wrote {args.out}: {report['results']}")
    return report


if __name__ == "__main__":
    main()
