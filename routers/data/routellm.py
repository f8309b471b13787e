"""RouteLLM's evaluation sets: GPT-4-1106-preview (strong) vs Mixtral-8x7B-Instruct (weak).

MMLU: one CSV per subject, correctness per model. GSM8K: correctness and both full responses.
MT-Bench: GPT-4 judge scores 1-10 per model and turn (quality = score / 10). None has a cost: RouteLLM
measures cost as the share of calls to the strong model, so `cost_usd` stays null."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa

from routers.data.table import long_table
from routers.tokens import count_tokens

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _truth(cell: str) -> float | None:
    cell = cell.strip().lower()
    return {"true": 1.0, "false": 0.0}.get(cell)


def mmlu_files(root: Path) -> list[Path]:
    return sorted((root / "mmlu").glob("mmlu_*.csv"))


def load_mmlu(root: str | Path) -> pa.Table:
    rows = []
    for path in mmlu_files(Path(root)):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        tokens = count_tokens([r["prompt"] for r in records])
        for i, (r, n_tokens) in enumerate(zip(records, tokens, strict=True)):
            for model in (STRONG, WEAK):
                rows.append({"dataset": "mmlu", "prompt_id": f"mmlu.{subject}.{i}", "prompt": r["prompt"],
                             "task": subject, "model": model, "quality": _truth(r[model]),
                             "prompt_tokens": n_tokens})
    return long_table(rows)


def gsm8k_files(root: Path) -> list[Path]:
    return [root / "gsm8k" / "gsm8k_responses.csv"]


def load_gsm8k(root: str | Path) -> pa.Table:
    (path,) = gsm8k_files(Path(root))
    with path.open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    prompt_tokens = count_tokens([r["prompt"] for r in records])
    rows = []
    for model in (STRONG, WEAK):
        answer_tokens = count_tokens([r[f"{model}_response"] for r in records])
        for i, (r, p_tokens, o_tokens) in enumerate(zip(records, prompt_tokens, answer_tokens, strict=True)):
            rows.append({"dataset": "gsm8k", "prompt_id": f"gsm8k.{i}", "prompt": r["prompt"], "task": "gsm8k",
                         "model": model, "quality": _truth(r[model]), "prompt_tokens": p_tokens,
                         "output_tokens": o_tokens})
    return long_table(rows)


def mt_bench_files(root: Path) -> list[Path]:
    return [root / "mt_bench" / "question.jsonl", root / "mt_bench" / "judgements.jsonl"]


def load_mt_bench(root: str | Path) -> pa.Table:
    """One prompt per (question, turn); turn 2's prompt is both user turns joined."""
    questions_path, judgements_path = mt_bench_files(Path(root))
    questions = {}
    for line in questions_path.read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        questions[q["question_id"]] = q
    scores: dict[tuple[int, int, str], float] = {}
    for line in judgements_path.read_text(encoding="utf-8").splitlines():
        j = json.loads(line)
        if j.get("score", -1) >= 1:  # -1 marks a judge failure
            scores[(j["question_id"], j["turn"], j["model"])] = j["score"] / 10.0
    models = sorted({model for _, _, model in scores})
    rows = []
    for qid, q in sorted(questions.items()):
        for turn in (1, 2):
            prompt = "\n\n".join(q["turns"][:turn])
            (n_tokens,) = count_tokens([prompt])
            for model in models:
                rows.append({"dataset": "mt_bench", "prompt_id": f"mt_bench.{qid}.{turn}", "prompt": prompt,
                             "task": q["category"], "model": model, "quality": scores.get((qid, turn, model)),
                             "prompt_tokens": n_tokens})
    return long_table(rows)
