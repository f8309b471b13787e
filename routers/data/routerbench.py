"""RouterBench 0-shot subset (RouterDC's copy): wide CSVs, one per task and split.

Per prompt and model: `<model>` score, `<model>|model_response`, `<model>|total_cost` (real USD).
Prompts and responses are Python list literals of strings. Empty scores (some arc_challenge cells)
stay missing. `sample_id` repeats for different prompts, so a prompt's id is the file and its row index.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pyarrow as pa

from routers.data.table import long_table
from routers.tokens import count_tokens
from routers.verify import short_answer

TASK_FILES = {"arc_challenge": "arc-challenge", "mbpp": "mbpp", "winograde": "winogrande"}
SPLITS = ("train", "test")


def _text(cell: str) -> str:
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell
    if isinstance(value, list):
        return "\n".join(str(part) for part in value)
    return str(value)


def _score(cell: str) -> float | None:
    return None if cell.strip() == "" else float(cell)


def routerbench_files(root: Path) -> list[Path]:
    return [root / f"{stem}_{split}.csv" for stem in TASK_FILES for split in SPLITS]


def load_routerbench(root: str | Path) -> pa.Table:
    root = Path(root)
    rows = []
    for path in routerbench_files(root):
        split = path.stem.rsplit("_", 1)[1]
        with path.open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        if not records:
            continue
        models = [name.split("|")[0] for name in records[0] if name.endswith("|total_cost")]
        prompts = [_text(r["prompt"]) for r in records]
        prompt_tokens = count_tokens(prompts)
        for model in models:
            answers = [_text(r[f"{model}|model_response"]) for r in records]
            answer_tokens = count_tokens(answers)
            for r, prompt, answer, p_tokens, o_tokens in zip(records, prompts, answers, prompt_tokens, answer_tokens,
                                                             strict=True):
                rows.append({
                    "dataset": "routerbench", "prompt_id": f"{path.stem}.{r['']}", "prompt": prompt,
                    "task": r["eval_name"], "split": split, "model": model, "quality": _score(r[model]),
                    "cost_usd": float(r[f"{model}|total_cost"]), "prompt_tokens": p_tokens,
                    "output_tokens": o_tokens, "answer": short_answer(answer),
                })
    return long_table(rows)
