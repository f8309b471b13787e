"""What the gateway's default ranker holds in memory: a fresh process imports the ranker's code, loads the
committed default artifact, scores one warm-up prompt (as the gateway does at start) and then distinct
prompts, and reports its resident memory after each step, split into anonymous memory (its own) and
file-backed pages (shared libraries, memory-mapped files: shared with the page cache and other processes,
and dropped first under memory pressure).

    .venv/bin/python -m bench.ranker_memory [--prompts 3000]   # ~1 min
    git worktree add /tmp/old <commit> && .venv/bin/python -m bench.ranker_memory --checkout /tmp/old --label old

`--checkout` measures another checkout's code (with this virtualenv) under `--label`; each run adds its
entry to bench/results/rankers/memory.json and keeps the others. Linux only (/proc/self/status)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS, ROOT, command, machine_info, write_report

OUT = RESULTS / "rankers" / "memory.json"

CHILD = r"""
import json, sys

def memory():
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name = line.split(":", 1)[0]
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mib": fields["VmRSS"], "anon_mib": fields["RssAnon"], "file_mib": fields["RssFile"]}

steps = {"start": memory()}
from rankers.artifact import DEFAULT_ARTIFACT, load_ranker, read_manifest
steps["imported"] = memory()
ranker = load_ranker(DEFAULT_ARTIFACT)
steps["loaded"] = memory()
ranker.score("warm up", "")
steps["warmed"] = memory()
prompts = json.loads(sys.stdin.read())
for i, prompt in enumerate(prompts):
    ranker.score(prompt, "gpt-4-1106-preview")
    if i + 1 in (100, len(prompts)):
        steps[f"after_{i + 1}_prompts"] = memory()
manifest = read_manifest(DEFAULT_ARTIFACT)
print(json.dumps({"artifact": {"family": manifest["family"], "version": manifest["version"]}, "steps": steps}))
"""


def prompts(count: int) -> list[str]:
    """Distinct prompts: the data's where ../shared/data is present, else generated ones (both touch many
    words: the word table's pages are mapped as tokens are first seen)."""
    try:
        from rankers.data import load_lengths  # noqa: PLC0415

        texts = list(dict.fromkeys(load_lengths("alpaca_eval").prompts.tolist()
                                   + load_lengths("routerbench").prompts.tolist()))
        if len(texts) >= count:
            return texts[:count]
    except OSError:  # routers.data.catalog.DataUnavailable: no ../shared/data here
        pass
    words = ["river", "market", "theory", "piano", "orbit", "garden", "ledger", "canyon", "syntax", "harvest"]
    return [f"Request {i}: explain the {words[i % 10]} of {words[(i // 10) % 10]} number {i * 7919 % 100003}"
            for i in range(count)]


def measure(checkout: Path, texts: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=checkout, input=json.dumps(texts), text=True,
                          capture_output=True, check=True, env=os.environ | {"PYTHONPATH": str(checkout)})
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code to measure (default: this one)")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    result = measure(args.checkout.resolve(), texts)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.checkout, capture_output=True,
                            text=True).stdout.strip()
    report = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    report["runs"][args.label] = {"command": command("bench.ranker_memory"), "commit": commit,
                                  "machine": machine_info(), "prompts": len(texts), **result}
    for step, values in result["steps"].items():
        print(f"{args.label:>16} {step:>20}: rss {values['rss_mib']:7.1f}  anon {values['anon_mib']:7.1f}  "
              f"file {values['file_mib']:7.1f} MiB")
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
