"""bench/gpt_oss.py's MXFP4 part: gpt-oss's experts kept packed (engine/model/mxfp4.py) against dequantized at
load (`dequantize_mxfp4`), on CPU, and the roofline's gpt-oss-20b and -120b on one H100-SXM, packed and bf16.

- `mxfp4_copy` writes the bench's gpt-oss checkpoint with its experts packed as the releases store them
  (tests/engine/gpt_oss_checkpoints.py's `pack_mxfp4`: E2M1 values, a power-of-two scale per 32).
- `load_footprint` loads it in a fresh process (spawned, so nothing else is resident) and reports the model's
  expert and total parameter bytes, counted from the tensors, and the process's resident memory (VmRSS) after
  the load minus after importing torch and the engine.
- `roofline_rows`: weight GiB, whether the weights fit one H100 with KV room (engine/roofline.py's vLLM-style
  capacity at 90% utilisation), and the decode step at 1 and 32 sequences of 4,096 tokens."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.batch import StepShape
from engine.roofline import GPUS, MODELS, RooflineStepTime
from engine.torch_runner import TorchModelRunner

CONTEXT = 4096
_EXPERTS = ("experts.gate_up_proj", "experts.down_proj")


def mxfp4_copy(plain: Path, out: Path) -> Path:
    """`plain` (a transformers-saved gpt-oss) with its experts packed to MXFP4, as the released checkpoints."""
    from tests.engine.gpt_oss_checkpoints import pack_mxfp4

    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(plain.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = f.get_tensor(name)
                if name.endswith(_EXPERTS):  # [experts, in, out] -> stored [experts, out, in]
                    tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = pack_mxfp4(tensor.transpose(1, 2))
                else:
                    tensors[name] = tensor
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((plain / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _footprint(model_dir: Path, dequantize: bool, dtype: torch.dtype, threads: int, queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(threads)
    before = _rss_bytes()
    runner = TorchModelRunner(model_dir, num_blocks=8, block_size=16, device="cpu", dtype=dtype,
                              dequantize_mxfp4=dequantize)
    params = list(runner.model.named_parameters())
    experts = sum(p.numel() * p.element_size() for n, p in params if ".experts." in n and not n.endswith("_bias"))
    queue.put({"expert_weight_bytes": experts, "param_bytes": sum(p.numel() * p.element_size() for _, p in params),
               "rss_after_load_bytes": _rss_bytes() - before})


def load_footprint(model_dir: Path, dequantize: bool, dtype: torch.dtype, threads: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_footprint, args=(model_dir, dequantize, dtype, threads, queue))
    process.start()
    result = queue.get(timeout=600)
    process.join()
    return result


def roofline_rows() -> dict:
    rows = {}
    for name in ("gpt-oss-20b", "gpt-oss-120b"):
        for label, shape in (("mxfp4", MODELS[name]), ("bf16", replace(MODELS[name], expert_weight_bytes=0.0))):
            roofline = RooflineStepTime(shape, GPUS["H100-SXM"])
            hybrid = shape.hybrid_attention
            read = hybrid.read_tokens(CONTEXT, 1) if hybrid is not None else CONTEXT
            try:
                fits, blocks = True, roofline.kv_capacity_blocks()
            except ValueError:
                fits, blocks = False, 0
            rows[f"{name}_{label}"] = {
                "weight_gib": shape.weight_memory_bytes / 2**30, "weight_gb": shape.weight_memory_bytes / 1e9,
                "fits_one_h100": fits, "kv_tokens_h100": blocks * 16,
                **{f"decode_step_ms_batch{batch}_at_{CONTEXT}": roofline.predict(
                    StepShape(0, 0, batch, batch * read, 0)) * 1e3 for batch in (1, 32)}}
    return rows
