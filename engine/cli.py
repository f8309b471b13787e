"""`pitstop engine ...`: serve one engine over HTTP, make a tiny test model, profile step times.
Heavy imports (torch, uvicorn) happen inside the handlers, so `pitstop --help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.classifier_config import classifier_head
from engine.cli_values import effort_budgets, lora_module, parse_bytes, speculative_config
from engine.config import KV_CACHE_DTYPES, QUANTIZATIONS, ImageLimits
from engine.cross_encoder_config import CROSS_ENCODER_FAMILIES, cross_encoder_config
from engine.hf_overrides import hf_overrides_argument, with_hf_overrides
from engine.policy import POLICIES
from engine.reasoning import PARSERS
from engine.tiny_moe import TINY_MOE_FAMILIES
from engine.tool_parsers import PARSERS as TOOL_CALL_PARSERS
from engine.tracing import endpoint_argument


def add_engine_commands(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve one engine with an OpenAI-compatible API")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a local Hugging Face model folder")
    source.add_argument("--sim", type=Path, metavar="PROFILE", help="a step-time profile JSON: a simulated GPU")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--timeout-keep-alive", type=float, default=75.0,
                       help="seconds an idle client connection is kept open (uvicorn's 5 by default: a client "
                            "that keeps its own longer, as aiohttp's 15, sends on connections being closed)")
    kv = serve.add_mutually_exclusive_group()
    kv.add_argument("--num-blocks", type=int, help="KV cache size in blocks")
    kv.add_argument("--kv-cache-memory", type=parse_bytes, metavar="BYTES", help="KV cache size, e.g. 4GiB")
    serve.add_argument("--host-kv-memory", type=parse_bytes, default=0, metavar="BYTES",
                       help="host memory for KV blocks the GPU evicts, loaded back on a prefix hit, e.g. 16GiB "
                            "(default 0: none)")
    serve.add_argument("--disk-kv-path", type=Path, metavar="DIR",
                       help="a folder for a disk KV tier behind the host tier (or the GPU): the blocks it evicts are "
                            "written to a file there and loaded back on a prefix hit, also after a restart "
                            "(needs --disk-kv-size)")
    serve.add_argument("--disk-kv-size", type=parse_bytes, default=0, metavar="BYTES",
                       help="the disk KV tier's file size, e.g. 64GiB (per tensor-parallel rank, a file each)")
    serve.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                       help="how KV is stored: auto (the model's dtype) or fp8 (e4m3; or fp8_e5m2), one byte an "
                            "element: twice the tokens in the same memory, scaled by an fp8 checkpoint's k/v scales")
    serve.add_argument("--calculate-kv-scales", action="store_true",
                       help="with an fp8 KV cache: measure each layer's scales on the first step (vLLM's flag)")
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                       help="shard the model over N ranks, each a process (a GPU each on CUDA); budgets are per rank")
    serve.add_argument("--quantization", choices=QUANTIZATIONS,
                       help="projections quantized while loading: int8 or fp8 (W8A8), or int4 (W4A16: 4-bit "
                            "weights in groups of 128 with zero points); a quantized checkpoint's own scheme "
                            "(compressed-tensors, fp8, AWQ, GPTQ) is used without this flag; with it, the flag "
                            "must name that scheme")
    serve.add_argument("--dequantize-mxfp4", action="store_true",
                       help="gpt-oss: dequantize the checkpoint's MXFP4 experts to the model's dtype at load (4x "
                            "their memory) rather than keep them packed and dequantize the routed ones per step")
    serve.add_argument("--disable-hybrid-kv-cache-manager", action="store_true",
                       help="a model mixing sliding-window and full layers (gpt-oss, Gemma 3) keeps every KV block of "
                            "every layer to a request's end, rather than its sliding layers' KV apart (vLLM's flag)")
    serve.add_argument("--enable-prompt-embeds", action="store_true", help="completions may send prompt_embeds (base64 torch.save'd [tokens, hidden] tensors, vLLM's flag)")
    serve.add_argument("--block-size", type=int, default=16)
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--max-num-seqs", type=int, default=64)
    serve.add_argument("--policy", default="program-rank", choices=sorted(POLICIES),
                       help="waiting-queue policy (program-rank: returning agent programs first, then the gateway's rank_score with aging; FCFS without hints)")
    serve.add_argument("--pin-budget-fraction", type=float, default=0.5)
    serve.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    serve.add_argument("--served-model-name", help="the model name clients send (default: the folder name)")
    serve.add_argument("--reasoning-parser", choices=PARSERS,
                       help="split a reasoning model's <think> block from its chat answers (reasoning_content)")
    serve.add_argument("--reasoning-effort-budgets", type=effort_budgets, metavar="JSON",
                       help="thinking budgets for reasoning_effort values, e.g. '{\"low\": 512}' (default: vLLM's "
                            "1024 / 2048 / 8192 for low / medium / high; minimal 256, none 0)")
    serve.add_argument("--tool-call-parser", choices=sorted(TOOL_CALL_PARSERS),
                       help="turn the tool calls a model writes as text into tool_calls (with tool_choice auto)")
    serve.add_argument("--speculative-config", type=speculative_config, metavar="JSON",
                       help='speculative decoding, as vLLM\'s flag: n-gram drafts \'{"method": "ngram", '
                            '"num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}\' '
                            '(add "draft_policy": "goodput" and a "step_time_profile", engine profile\'s file, '
                            'to check only the drafts that pay), or a draft model\'s: \'{"model": "DIR", '
                            '"num_speculative_tokens": 4}\' (a smaller model with the same tokenizer; with goodput, '
                            'its own profile as "draft_step_time_profile"), or an EAGLE head\'s: \'{"method": "eagle", '
                            '"model": "DIR", "num_speculative_tokens": 4}\' ("eagle3" for an EAGLE-3 head)')
    serve.add_argument("--lora-modules", type=lora_module, nargs="+", default=[], metavar="NAME=PATH",
                       help="LoRA adapters (PEFT folders) served beside the model, each under its own model name")
    serve.add_argument("--max-loras", type=int, default=8, help="adapters served at once (default 8)")
    serve.add_argument("--max-lora-rank", type=int, default=64, help="the largest adapter rank accepted (default 64)")
    serve.add_argument("--allow-runtime-lora-updating", action="store_true",
                       help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (they read folders "
                            "on this machine; vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING)")
    serve.add_argument("--allow-weight-updates", action="store_true",
                       help="enable POST /pause, /resume, /reset_prefix_cache and /update_weights_from_disk and GET "
                            "/is_paused (an RL trainer's: new weights from a checkpoint folder on this machine, no "
                            "restart)")
    serve.add_argument("--enable-sleep-mode", action="store_true",
                       help="enable POST /sleep and /wake_up and GET /is_sleeping (vLLM's: an RL trainer sharing the "
                            "GPU puts the engine to sleep, its KV cache released and its weights offloaded or "
                            "dropped, while it trains)")
    serve.add_argument("--otlp-traces-endpoint", type=endpoint_argument, metavar="URL",
                       help="OpenTelemetry: a span per request to this OTLP/HTTP collector (vLLM's flag)")
    serve.add_argument("--limit-images-per-prompt", type=int, default=8, metavar="N",
                       help="a vision model's most images in one prompt (vLLM's --limit-mm-per-prompt; default 8)")
    serve.add_argument("--max-image-bytes", type=parse_bytes, default=20 << 20, metavar="BYTES",
                       help="an image's largest encoded size, sent or fetched (default 20MiB)")
    serve.add_argument("--image-fetch-timeout", type=float, default=10.0, metavar="S",
                       help="seconds an http(s) image URL's fetch may take (default 10)")
    serve.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                       help="the only hosts an image URL (and each redirect) may name, as vLLM's flag (default: any); "
                            "these are fetched whatever address they resolve to")
    serve.add_argument("--allow-private-media-urls", action=argparse.BooleanOptionalAction, default=True,
                       help="fetch image URLs resolving to loopback or private addresses (default: yes; a public "
                            "engine says --no-allow-private-media-urls); link-local (cloud metadata), multicast "
                            "and reserved addresses are never fetched unless --allowed-media-domains names the host")
    serve.add_argument("--hf-overrides", type=hf_overrides_argument, metavar="JSON", help="config.json keys to replace")
    serve.add_argument("--torch-threads", type=int, default=1, metavar="N",
                       help="a cross-encoder folder (a reranker, served on /v1/rerank and /v1/score): the torch "
                            "threads its forward passes use (default 1)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=serve_command)

    tiny = subparsers.add_parser("make-tiny-model", help="write a tiny random model folder (tests, benchmarks)")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--heads", type=int)
    tiny.add_argument("--kv-heads", type=int)
    tiny.add_argument("--vocab-size", type=int)
    tiny.add_argument("--seed", type=int)
    tiny.add_argument("--family", choices=["llama", "qwen3", "qwen3_moe", "gemma3", "phi3", "llava", "gemma3_vision",
                                                 "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "whisper", *TINY_MOE_FAMILIES,
                                                 *CROSS_ENCODER_FAMILIES],
                      default="llama",
                      help="qwen3 adds per-head q/k norms; qwen3_moe makes every MLP a mixture of experts; gemma3 is "
                           "Gemma 3's layout (a sliding layer every second one); phi3 stores q/k/v and gate/up fused; "
                           "llava adds a CLIP tower and projector (56-pixel images, 16 tokens each: engine/tiny_llava.py); "
                           "gemma3_vision is Gemma 3 with a SigLIP tower and its pooling projector (56-pixel images, 16 "
                           "tokens each: engine/tiny_gemma3_vision.py); qwen2_5_vl is Qwen2.5-VL (its vision "
                           "transformer, M-RoPE; a 32 x 24 picture is 12 tokens: engine/tiny_qwen2_5_vl.py); "
                           "qwen3_vl / qwen3_vl_moe: Qwen3-VL (interleaved M-RoPE, DeepStack) on Qwen3 / Qwen3-MoE "
                           "(engine/tiny_qwen3_vl.py); "
                           "deepseek_v2 / deepseek_v3 / qwen2_moe: saved by transformers (engine/tiny_moe.py); "
                           "*_cross_encoder: a one-label *ForSequenceClassification reranker and its tokenizer "
                           "(engine/tiny_cross_encoder.py); whisper: WhisperForConditionalGeneration with Whisper's "
                           "special tokens, served on /v1/audio/transcriptions (engine/tiny_whisper.py)")
    tiny.add_argument("--experts", type=int, help="qwen3_moe and the *_moe / deepseek_* families: experts per layer "
                      "(default 8)")
    tiny.add_argument("--experts-per-token", type=int, help="qwen3_moe: experts each token uses (default 2)")
    tiny.set_defaults(handler=make_tiny_model_command)

    lora = subparsers.add_parser("make-tiny-lora", help="write a random LoRA adapter (PEFT folder) for a model folder")
    lora.add_argument("dir", type=Path)
    lora.add_argument("--model", type=Path, required=True, help="the model folder it adapts")
    lora.add_argument("--rank", type=int, default=8)
    lora.add_argument("--seed", type=int, default=0)
    lora.set_defaults(handler=make_tiny_lora_command)

    quantize = subparsers.add_parser("quantize", help="write a W8A8 (int8 or fp8) or W4A16 (int4) copy of a model "
                                     "folder, in compressed-tensors' layout")
    quantize.add_argument("--model", type=Path, required=True, help="a full-precision Hugging Face model folder")
    quantize.add_argument("--out", type=Path, required=True, help="the folder to write")
    quantize.add_argument("--quantization", choices=QUANTIZATIONS, default="int8")
    quantize.add_argument("--group-size", type=int, metavar="N",
                          help="int4: input columns sharing a scale and zero point (default 128; 32 or 64 for "
                               "widths 128 does not divide)")
    quantize.set_defaults(handler=quantize_command)

    profile = subparsers.add_parser("profile", help="measure step times of a model, write a sim profile")
    profile.add_argument("--model", type=Path, required=True)
    profile.add_argument("--out", type=Path, required=True, metavar="PROFILE.json")
    profile.add_argument("--device")
    profile.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                         help="the KV storage to measure (a simulation with an fp8 cache needs an fp8 profile)")
    profile.add_argument("--quantization", choices=QUANTIZATIONS,
                         help="quantized projections to measure (int8 or fp8 W8A8, int4 W4A16)")
    profile.add_argument("--disk-kv-path", type=Path, metavar="DIR",
                         help="a folder on the drive a disk KV tier will use: its reads are timed there "
                              "(default: beside --out)")
    profile.add_argument("--dequantize-mxfp4", action="store_true",
                         help="gpt-oss's MXFP4 experts dequantized at load, as serve's flag (default: kept packed)")
    profile.set_defaults(handler=profile_command)

    from engine.roofline import GPUS, MODELS

    roofline = subparsers.add_parser("roofline", help="write a roofline step-time profile for a model on a GPU "
                                                      "(a simulated GPU, or what prices speculative drafts)")
    model = roofline.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", type=Path, help="a Hugging Face model folder (its config.json)")
    model.add_argument("--builtin", choices=sorted(MODELS), help="a built-in model shape")
    roofline.add_argument("--gpu", choices=sorted(GPUS), required=True)
    roofline.add_argument("--tensor-parallel", type=int, default=1)
    roofline.add_argument("--quantization", choices=QUANTIZATIONS,
                          help="the engine's quantized projections: W8A8 (int8, fp8) at one byte a weight and "
                               "the format's FLOP/s, W4A16 (int4) at half a byte plus its scales, bf16 FLOP/s")
    roofline.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                          help="fp8: KV stored in one byte an element (default auto: as the weights, at least 2)")
    roofline.add_argument("--out", type=Path, required=True, metavar="PROFILE.json")
    roofline.set_defaults(handler=roofline_command)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.build import build_engine
    from engine.server.app import create_app

    if args.model is not None and not (args.model / "config.json").is_file():
        print(f"pitstop: {args.model} is not a model folder (no config.json; expected a Hugging Face folder "
              "with safetensors, config and tokenizer)", file=sys.stderr)
        return 2
    if args.sim is not None and not args.sim.is_file():
        print(f"pitstop: step-time profile {args.sim} not found (`pitstop engine profile` writes one)", file=sys.stderr)
        return 2
    name = args.served_model_name or (args.model.resolve().name if args.model else args.sim.stem)
    try:
        model_dir = None if args.model is None else with_hf_overrides(args.model, args.hf_overrides)
        head = None if model_dir is None else classifier_head(model_dir)  # a decoder classifier: the engine's
    except ValueError as exc:
        print(f"pitstop: {exc}", file=sys.stderr)
        return 2
    if model_dir is not None and cross_encoder_config(model_dir) is not None:  # a reranker: no KV, no generation
        from engine.cross_encoder import CrossEncoder
        from engine.server.cross_encoder_app import create_cross_encoder_app

        encoder = CrossEncoder(model_dir, args.device, args.torch_threads)
        uvicorn.run(create_cross_encoder_app(encoder, name), host=args.host, port=args.port,
                    log_level=args.log_level, timeout_keep_alive=args.timeout_keep_alive)
        return 0
    adapters = dict(args.lora_modules)
    if name in adapters or len(adapters) < len(args.lora_modules):
        print(f"pitstop: --lora-modules names must differ from each other and from the model's {name!r}",
              file=sys.stderr)
        return 2
    try:
        engine = build_engine(model_dir, args.sim, num_blocks=args.num_blocks,
                              kv_cache_memory_bytes=args.kv_cache_memory, block_size=args.block_size,
                              max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs, policy=args.policy,
                              pin_budget_fraction=args.pin_budget_fraction, device=args.device,
                              speculative=args.speculative_config, host_kv_memory_bytes=args.host_kv_memory,
                              kv_cache_dtype=args.kv_cache_dtype, calculate_kv_scales=args.calculate_kv_scales,
                              quantization=args.quantization, tensor_parallel_size=args.tensor_parallel_size,
                              reasoning_effort_budgets=args.reasoning_effort_budgets,
                              lora_modules=adapters, max_loras=args.max_loras,
                              max_lora_rank=args.max_lora_rank, disk_kv_path=args.disk_kv_path,
                              disk_kv_bytes=args.disk_kv_size, dequantize_mxfp4=args.dequantize_mxfp4,
                              hybrid_kv_cache=not args.disable_hybrid_kv_cache_manager, enable_prompt_embeds=args.enable_prompt_embeds,
                              image_limits=ImageLimits(args.limit_images_per_prompt, args.max_image_bytes,
                                                       args.image_fetch_timeout,
                                                       None if args.allowed_media_domains is None
                                                       else frozenset(args.allowed_media_domains),
                                                       args.allow_private_media_urls))
    except ValueError as exc:  # an adapter or a checkpoint that cannot be served, a bad profile
        print(f"pitstop: {exc}", file=sys.stderr)
        return 2
    if head is not None:  # vLLM's /classify, and rerank and score for one label (engine/server/classifier_app.py)
        from engine.server.classifier_app import create_classifier_app

        uvicorn.run(create_classifier_app(engine, model_dir, head, name), host=args.host, port=args.port,  # type: ignore[arg-type]
                    log_level=args.log_level, timeout_keep_alive=args.timeout_keep_alive)
        return 0
    uvicorn.run(create_app(engine, name, args.reasoning_parser, args.tool_call_parser,
                           args.allow_runtime_lora_updating, args.otlp_traces_endpoint, args.allow_weight_updates,
                           args.enable_sleep_mode),
                host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=args.timeout_keep_alive)
    return 0


def roofline_command(args: argparse.Namespace) -> int:

    from engine.roofline import GPUS, ModelShape, RooflineStepTime
    from engine.step_time import save_profile

    if args.builtin is not None:
        model = RooflineStepTime.builtin(args.builtin, args.gpu, args.tensor_parallel,
                                         quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype)
    else:
        config = args.model / "config.json"
        if not config.is_file():
            print(f"pitstop: {args.model} is not a model folder (no config.json)", file=sys.stderr)
            return 2
        shape = ModelShape.from_hf_config(json.loads(config.read_text()), name=args.model.resolve().name)
        model = RooflineStepTime(shape, GPUS[args.gpu], args.tensor_parallel)
        model = model.with_quantization(args.quantization).with_kv_cache_dtype(args.kv_cache_dtype)
    try:
        blocks = model.kv_capacity_blocks()
    except ValueError as error:  # the weights leave no room for KV on these GPUs
        print(f"pitstop: {error}", file=sys.stderr)
        return 2
    save_profile(args.out, model, source={"method": "roofline", "gpu": args.gpu, "tensor_parallel": args.tensor_parallel})
    print(f"{args.out}: {model.model.name} on {args.tensor_parallel} x {args.gpu}, {blocks * 16:,} tokens of KV")
    return 0


def make_tiny_model_command(args: argparse.Namespace) -> int:
    from engine.tiny_model import make_tiny_model

    if args.family in CROSS_ENCODER_FAMILIES:
        from engine.tiny_cross_encoder import make_tiny_cross_encoder

        extra = {"heads": args.heads, "vocab_size": args.vocab_size, "seed": args.seed}
        print(make_tiny_cross_encoder(args.dir, CROSS_ENCODER_FAMILIES[args.family], layers=args.layers,
                                      hidden=args.hidden, **{k: v for k, v in extra.items() if v is not None}))
        return 0

    if args.family == "llava":
        from engine.tiny_llava import make_tiny_llava

        options = {"heads": args.heads, "kv_heads": args.kv_heads, "vocab_size": args.vocab_size, "seed": args.seed}
        print(make_tiny_llava(args.dir, layers=args.layers, hidden=args.hidden, image_size=56,
                              **{k: v for k, v in options.items() if v is not None}))
        return 0
    if args.family == "qwen2_5_vl":
        from engine.tiny_qwen2_5_vl import make_tiny_qwen2_5_vl

        extra = {"vocab_size": args.vocab_size, "seed": args.seed, "heads": args.heads, "kv_heads": args.kv_heads}
        print(make_tiny_qwen2_5_vl(args.dir, layers=args.layers, hidden=args.hidden,
                                   **{k: v for k, v in extra.items() if v is not None}))
        return 0
    if args.family in ("qwen3_vl", "qwen3_vl_moe"):
        from engine.tiny_qwen3_vl import make_tiny_qwen3_vl

        extra = {"vocab_size": args.vocab_size, "seed": args.seed, "heads": args.heads, "kv_heads": args.kv_heads}
        print(make_tiny_qwen3_vl(args.dir, moe=args.family == "qwen3_vl_moe", layers=args.layers, hidden=args.hidden,
                                 deepstack=min(2, args.layers), **{k: v for k, v in extra.items() if v is not None}))
        return 0
    if args.family == "whisper":
        from engine.tiny_whisper import make_tiny_whisper

        print(make_tiny_whisper(args.dir, layers=args.layers, d_model=args.hidden,
                                **({"heads": args.heads} if args.heads else {}), seed=args.seed or 0))
        return 0
    if args.family == "gemma3_vision":
        from engine.tiny_gemma3_vision import make_tiny_gemma3_vision

        extra = {"vocab_size": args.vocab_size, "seed": args.seed}
        print(make_tiny_gemma3_vision(args.dir, layers=args.layers, hidden=args.hidden,
                                      **{k: v for k, v in extra.items() if v is not None}))
        return 0
    options = {"heads": args.heads, "kv_heads": args.kv_heads, "vocab_size": args.vocab_size, "seed": args.seed,
               "experts": args.experts, "experts_per_token": args.experts_per_token}
    if args.family in TINY_MOE_FAMILIES:
        from engine.tiny_moe import make_tiny_moe_model

        print(make_tiny_moe_model(args.dir, args.family, layers=args.layers, hidden=args.hidden,
                                  **{k: v for k, v in options.items() if v is not None}))
        return 0
    path = make_tiny_model(args.dir, layers=args.layers, hidden=args.hidden, family=args.family,
                           **{k: v for k, v in options.items() if v is not None})
    print(path)
    return 0


def make_tiny_lora_command(args: argparse.Namespace) -> int:
    from engine.tiny_lora import make_tiny_lora

    print(make_tiny_lora(args.model, args.dir, rank=args.rank, seed=args.seed))
    return 0


def quantize_command(args: argparse.Namespace) -> int:
    from engine.quantize_checkpoint import quantize_checkpoint

    if not (args.model / "config.json").is_file():
        print(f"pitstop: {args.model} is not a model folder (no config.json)", file=sys.stderr)
        return 2
    try:
        print(quantize_checkpoint(args.model, args.out, args.quantization, args.group_size))
    except ValueError as exc:  # already quantized, or groups that do not divide a projection's width
        print(f"pitstop: {exc}", file=sys.stderr)
        return 2
    return 0


def profile_command(args: argparse.Namespace) -> int:
    from engine.profile import run_profile

    run_profile(args.model, args.out, device=args.device, kv_cache_dtype=args.kv_cache_dtype,
                quantization=args.quantization, disk_kv_path=args.disk_kv_path,
                dequantize_mxfp4=args.dequantize_mxfp4)
    print(args.out)
    return 0
