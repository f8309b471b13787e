"""bench/disk_kv.py's torch part: on this CPU, the time to first token of a long prompt whose prefix is
computed, found on the GPU (the KV cache), loaded from the host tier, loaded from the disk tier with its file
in the page cache and with it dropped from there (the reads come from the drive), and loaded from disk by a
restarted engine; and what a disk write costs the step that queues it against what the writer thread spends.

Each repeat uses a fresh prompt, so nothing but the tier under test holds it. The model is a random one made
for the run (engine/tiny_model.py), large enough that computing a prompt takes a while on a CPU."""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.config import EngineConfig
from engine.kv_transfer import DISK
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tiny_model import make_tiny_model
from engine.torch_runner import TorchModelRunner

BLOCK = 16
_NAP_S = 0.001  # engine/async_engine.py naps 5 ms when nothing could be scheduled; finer here, for the timing
PATHS = ("computed", "gpu_prefix_cache", "host_tier", "disk_page_cache", "disk_drive", "disk_after_restart")


def time_to_first_token(prompt_tokens: int, layers: int, hidden: int, repeats: int,
                        disk_dir: Path | None = None, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="pitstop-disk-kv-bench-", dir=disk_dir) as tmp:
        return _run(Path(tmp), prompt_tokens, layers, hidden, repeats, threads)


def _run(tmp: Path, prompt_tokens: int, layers: int, hidden: int, repeats: int, threads: int) -> dict:
    model_dir = make_tiny_model(tmp / "model", layers=layers, hidden=hidden, heads=8, kv_heads=8,
                                max_position_embeddings=prompt_tokens + 64)
    prompt_blocks = -(-(prompt_tokens + 2) // BLOCK)
    num_blocks = prompt_blocks + 2  # one prompt at a time: the next one evicts it

    def engine(host: int = 0, disk: int = 0, blocks: int = num_blocks) -> LLMEngine:
        runner = TorchModelRunner(model_dir, blocks, BLOCK, device="cpu", dtype=torch.float32, num_host_blocks=host,
                                  disk_kv_path=tmp / "kv" if disk else None, num_disk_blocks=disk)
        config = EngineConfig(block_size=BLOCK, num_blocks=blocks, max_model_len=prompt_tokens + 64, max_num_seqs=4,
                              max_num_batched_tokens=2048, num_host_blocks=host, num_disk_blocks=disk)
        return LLMEngine(config, runner)

    rng = random.Random(0)
    vocab = 1000

    def prompt() -> list[int]:
        return [rng.randrange(vocab) for _ in range(prompt_tokens)]

    plain, host, disk = engine(blocks=4 * prompt_blocks), engine(host=4 * prompt_blocks), engine(disk=8 * prompt_blocks)
    save_timer = _SaveTimer(disk)
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    cached: dict[str, list[int]] = {path: [] for path in PATHS}

    def record(path: str, engine: LLMEngine, tokens: list[int]) -> None:
        seconds, num_cached = _ttft(engine, tokens)
        times[path].append(seconds)
        cached[path].append(num_cached)

    for _ in range(repeats):
        record("computed", plain, prompt())
        shared = prompt()
        _ttft(plain, shared)
        record("gpu_prefix_cache", plain, shared + [1])
        for path, tiered in (("host_tier", host), ("disk_page_cache", disk), ("disk_drive", disk)):
            shared = prompt()
            _ttft(tiered, shared)
            _ttft(tiered, prompt())  # every block: `shared` goes to the tier
            if path == "disk_page_cache":  # its writes done: the reads come from the file, in the page cache
                tiered.runner.flush_disk()  # type: ignore[attr-defined]
            if path == "disk_drive":
                tiered.runner.disk.drop_page_cache()  # type: ignore[attr-defined]
            record(path, tiered, shared + [1])
        shared = prompt()
        _ttft(disk, shared)  # on the GPU at the close: the clean close writes it to disk
        disk.close()
        disk = engine(disk=8 * prompt_blocks)
        disk.runner.disk.drop_page_cache()  # type: ignore[attr-defined]
        save_timer.attach(disk)
        record("disk_after_restart", disk, shared + [1])
    store = disk.runner.disk  # type: ignore[attr-defined]
    writes = save_timer.totals(store)
    disk.close()
    kv_bytes_per_token = TorchModelRunner.kv_bytes_per_block(plain.runner.config, 1, torch.float32)  # type: ignore[attr-defined]
    return {
        "model": {"layers": layers, "hidden": hidden, "heads": 8, "kv_heads": 8, "dtype": "float32"},
        "prompt_tokens": prompt_tokens, "kv_bytes_per_token": kv_bytes_per_token,
        "prompt_kv_mib": prompt_tokens * kv_bytes_per_token / 2**20, "repeats": repeats, "torch_threads": threads,
        "ttft_s_median": {path: statistics.median(v) for path, v in times.items()},
        "ttft_s": times, "cached_tokens": cached,
        "speedup_vs_computed": {path: statistics.median(times["computed"]) / statistics.median(v)
                                for path, v in times.items()},
        "disk_writes": writes, "disk_folder": _filesystem(tmp),
    }


def _ttft(engine: LLMEngine, tokens: list[int]) -> tuple[float, int]:
    """Seconds from adding the request to its first token (all it asks for), and its cached tokens."""
    started = time.perf_counter()
    seq = engine.add_request(f"r{time.perf_counter_ns()}", tokens, SamplingParams(temperature=0, max_tokens=1))
    while engine.has_unfinished():
        steps = engine.num_steps
        engine.step()
        if engine.num_steps == steps:  # waiting for its blocks to be read ahead: nap, as the server's loop does
            time.sleep(_NAP_S)
    return time.perf_counter() - started, seq.num_cached_tokens


class _SaveTimer:
    """Times the runner's disk saves as the step performs them (a copy of the blocks, then queued)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.seconds = 0.0
        self.blocks = 0
        self.stores: list = []
        self.attach(engine)

    def attach(self, engine: LLMEngine) -> None:
        runner = engine.runner
        transfer = runner.transfer_kv  # type: ignore[attr-defined]
        self.stores.append(runner.disk)  # type: ignore[attr-defined]

        def timed(transfers: list) -> None:
            saves = [t for t in transfers if t.save and t.tier == DISK]
            if saves and len(saves) == len(transfers):
                started = time.perf_counter()
                transfer(transfers)
                self.seconds += time.perf_counter() - started
                self.blocks += len(saves)
            else:
                transfer(transfers)

        runner.transfer_kv = timed  # type: ignore[attr-defined]

    def totals(self, last_store: object) -> dict:
        stores = self.stores
        written = sum(s.written_blocks for s in stores)
        return {"step_s_per_block": self.seconds / max(1, self.blocks), "steps_blocks": self.blocks,
                "writer_s_per_block": sum(s.write_s for s in stores) / max(1, written), "writer_blocks": written,
                "step_waited_for_writer_s": sum(s.stalled_s for s in stores)}


def _filesystem(path: Path) -> dict:
    """The mount the disk tier's file was on (from /proc/mounts): what 'the drive' was in this run."""
    best = ("", "", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[1]):
                best = (device, mount, fstype)
    except OSError:
        pass
    return {"device": best[0], "mount": best[1], "fstype": best[2]}
