"""Whisper on Pitstop's engine (engine/whisper_runner.py): where a request's time goes (the encoder, once per 30 s
window, against the decoder's steps) and what batching buys (requests submitted at once, which the scheduler
decodes together, against the same requests one at a time). Also the encoder alone on 8 windows in one call
against 8 calls of one (why the runner encodes a window at a time on a CPU), and transformers' `generate` on
each request one at a time as the reference line.

A random-weight whisper-tiny-shaped model (d_model 384, 4 + 4 layers, 6 heads, MLPs of 1,536, 80 mel bins, a
51,865-token vocabulary, float32; engine/tiny_whisper.py) on this CPU; every request a 20 s chirp (one window,
its features made once before timing), language given, `--tokens` tokens decoded (EOS ignored, so every run
decodes as many). Each arm is run `--repeats` times, interleaved; medians reported. Writes
bench/results/whisper.json.

    .venv/bin/python -m bench.whisper            # full run (about 2 minutes on 2 cores)
    .venv/bin/python -m bench.whisper --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import command, machine_info, write_report

RESULTS = Path(__file__).parent / "results"
SHAPE = {"d_model": 384, "layers": 4, "heads": 6, "ffn_dim": 1536, "base_vocab": 51_852}  # whisper-tiny's


def chirps(count: int, seconds: float) -> list[np.ndarray]:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return [(0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t / 5))).astype(np.float32) for i in range(count)]


async def _run(engine: object, tokens: object, inputs: list, max_tokens: int, at_once: bool) -> tuple[float, int]:
    """Wall seconds to transcribe every input (all submitted at once, or each after the last), tokens decoded."""
    from engine.audio_inputs import AudioInput
    from engine.sampling_params import SamplingParams
    from engine.transcription import transcribe_window

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    fresh = [AudioInput(a.features, a.content_hash) for a in inputs]  # the encoder runs again in every arm

    async def one(i: int) -> int:
        count = 0
        async for out in transcribe_window(engine, tokens, fresh[i], "transcribe", "en", [], params,  # type: ignore[arg-type]
                                           f"bench-{time.monotonic_ns()}-{i}"):
            count += len(out.new_token_ids)
        return count

    start = time.perf_counter()
    if at_once:
        counts = await asyncio.gather(*(one(i) for i in range(len(fresh))))
    else:
        counts = [await one(i) for i in range(len(fresh))]
    return time.perf_counter() - start, sum(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48, help="tokens decoded a request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "whisper.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.tokens, args.repeats = 3, 8, 1
    import torch
    import transformers as hf

    from engine.audio_decode import log_mel
    from engine.audio_inputs import audio_input
    from engine.build import build_engine
    from engine.tiny_whisper import make_tiny_whisper
    from engine.transcription import WhisperTokens

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_whisper(Path(tmp) / "whisper", **SHAPE)  # type: ignore[arg-type]
        engine = build_engine(folder, num_blocks=512)
        runner = engine.engine.runner
        tokens = WhisperTokens.from_folder(folder, engine.tokenizer, runner.max_model_len)  # type: ignore[attr-defined]
        audio = chirps(args.requests, 20.0)
        inputs = [audio_input(torch.from_numpy(log_mel(str(folder), a))) for a in audio]
        reference = hf.WhisperForConditionalGeneration.from_pretrained(str(folder)).eval()
        arms: dict[str, list[float]] = {"one_at_a_time_s": [], "at_once_s": [], "encoder_window_s": [],
                                        "encoder_batch_s": [], "encoder_one_by_one_s": [], "transformers_one_at_a_time_s": []}
        decoded = 0

        async def measure() -> None:
            nonlocal decoded
            await engine.start()
            await _run(engine, tokens, inputs[:1], 2, False)  # warm-up
            for _ in range(args.repeats):
                for name, at_once in (("one_at_a_time_s", False), ("at_once_s", True)):
                    seconds, decoded = await _run(engine, tokens, inputs, args.tokens, at_once)
                    arms[name].append(seconds)
                with torch.inference_mode():
                    features = torch.stack([a.features for a in inputs])
                    start = time.perf_counter()
                    runner.model.encode(features[:1])  # type: ignore[attr-defined]
                    arms["encoder_window_s"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    runner.model.encode(features)  # type: ignore[attr-defined]
                    arms["encoder_batch_s"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    for i in range(len(inputs)):
                        runner.model.encode(features[i:i + 1])  # type: ignore[attr-defined]
                    arms["encoder_one_by_one_s"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    for a in inputs:
                        reference.generate(a.features[None], language="en", task="transcribe",
                                           max_new_tokens=args.tokens, min_new_tokens=args.tokens)
                    arms["transformers_one_at_a_time_s"].append(time.perf_counter() - start)
            await engine.shutdown()

        asyncio.run(measure())
    median = {name: statistics.median(values) for name, values in arms.items()}
    per_request = median["one_at_a_time_s"] / args.requests
    report = {
        "command": command("bench.whisper", argv), "machine": machine_info(),
        "settings": {"model": "random weights, whisper-tiny's shape", **SHAPE, "requests": args.requests,
                     "audio_seconds_each": 20.0, "tokens_each": args.tokens, "repeats": args.repeats,
                     "torch_threads": args.threads, "tokens_decoded_per_arm": decoded},
        "runs": arms,
        "median": median,
        "per_request": {"total_one_at_a_time_s": per_request, "encoder_s": median["encoder_window_s"],
                        "decoder_s": per_request - median["encoder_window_s"],
                        "encoder_share": median["encoder_window_s"] / per_request},
        "batching": {"speedup_at_once_vs_one_at_a_time": median["one_at_a_time_s"] / median["at_once_s"],
                     "audio_seconds_per_second_one_at_a_time": 20.0 * args.requests / median["one_at_a_time_s"],
                     "audio_seconds_per_second_at_once": 20.0 * args.requests / median["at_once_s"],
                     "encoder_one_call_speedup_over_one_by_one": median["encoder_one_by_one_s"]
                     / median["encoder_batch_s"],
                     "engine_one_at_a_time_vs_transformers": median["transformers_one_at_a_time_s"]
                     / median["one_at_a_time_s"]},
    }
    write_report(args.out, report)
    print(f"per request: {per_request * 1000:.0f} ms ({median['encoder_window_s'] * 1000:.0f} ms encoder); "
          f"{args.requests} at once {median['at_once_s']:.2f} s vs one at a time {median['one_at_a_time_s']:.2f} s "
          f"({report['batching']['speedup_at_once_vs_one_at_a_time']:.2f}x); transformers "
          f"{median['transformers_one_at_a_time_s']:.2f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
