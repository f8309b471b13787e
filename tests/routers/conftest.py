"""Fixtures: a tiny static encoder and a synthetic routing data set where the right model depends on
the prompt, so a learned router has something real to learn (and a broken one measurably fails)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.data.catalog import DataUnavailable, data_root
from routers.data.table import long_table, to_wide
from routers.features.static import StaticEncoder
from routers.tokens import counting_tokenizer

MATH = ["What is {a} plus {b}?", "Compute {a} times {b}.", "Solve for x: x + {a} = {b}.",
        "How much is {a} minus {b}?"]
CHAT = ["Write a short poem about the {w}.", "Tell me a story about a {w}.", "Describe the {w} in one sentence.",
        "Give me advice about my {w}."]
WORDS = ["sea", "cat", "garden", "winter", "train", "city", "forest", "friend", "job", "mountain"]


def random_encoder() -> StaticEncoder:
    """A random 16-dimensional table over the real vocabulary: fast, deterministic, not distilled."""
    vocab = counting_tokenizer().get_vocab_size()
    rng = np.random.default_rng(0)
    return StaticEncoder(rng.normal(size=(vocab, 16)).astype(np.float32), np.ones(vocab, np.float32),
                         {"teacher": "random (tests)", "dim": 16})


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny.npz"
    random_encoder().save(path)
    return path


def synthetic_rows(n: int = 160, seed: int = 0) -> list[dict]:
    """'solver' (cheap) is right on math prompts, 'writer' (cheap) on chat prompts, 'big' (costly) on 90%."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        is_math = i % 2 == 0
        template = MATH[i % len(MATH)] if is_math else CHAT[i % len(CHAT)]
        prompt = template.format(a=rng.integers(2, 99), b=rng.integers(2, 99), w=WORDS[i % len(WORDS)])
        split = "test" if i % 5 == 4 else "train"
        outcomes = {"solver": float(is_math), "writer": float(not is_math), "big": float(rng.random() < 0.9)}
        prices = {"solver": 1e-7, "writer": 1e-7, "big": 1e-5}
        for model, quality in outcomes.items():
            rows.append({"dataset": "synthetic", "prompt_id": f"s{i}", "prompt": prompt,
                         "task": "math" if is_math else "chat", "split": split, "model": model, "quality": quality,
                         "cost_usd": prices[model] * 40, "prompt_tokens": 10, "output_tokens": 30})
    return rows


@pytest.fixture()
def synthetic_data():
    return to_wide(long_table(synthetic_rows()), name="synthetic")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "README.md").is_file():
        pytest.skip(f"shared data folder {root} is absent (../shared/data or $PITSTOP_DATA); data tests skipped")
    return root


def load_or_skip(name: str, root: Path):
    from routers.data.catalog import load_dataset

    try:
        return load_dataset(name, root)
    except DataUnavailable as error:
        pytest.skip(str(error))


# The cheap model's chance of a right answer by kind of prompt; the costly one is right 90% of the time,
# so at cost preference 0 the costly one wins on most prompts and a budget moves choices gradually.
GRADED = {"Add {a} and {b}.": 0.97, "Name a colour of the {w}.": 0.9, "Spell the word {w}.": 0.8,
          "Summarise the history of the {w}.": 0.6, "Write a sonnet about the {w}.": 0.45,
          "Prove that {a} is not a perfect square.": 0.3, "Translate a poem about the {w} into Latin.": 0.2,
          "Design a database schema for a {w} shop.": 0.1}


def graded_prompts(n_per_template: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [t.format(a=rng.integers(2, 999), b=rng.integers(2, 999), w=WORDS[rng.integers(len(WORDS))])
            for _ in range(n_per_template) for t in GRADED]


def graded_rows(n_per_template: int = 40, seed: int = 0) -> list[dict]:
    """Models 'cheap' (1e-7 $ a token) and 'costly' (1e-5, 0.9 everywhere); one in five prompts is test."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, prompt in enumerate(graded_prompts(n_per_template, seed)):
        cheap_right = GRADED[list(GRADED)[i % len(GRADED)]]
        for model, p, price in (("cheap", cheap_right, 1e-7), ("costly", 0.9, 1e-5)):
            rows.append({"dataset": "graded", "prompt_id": f"p{i}", "prompt": prompt, "task": "t", "model": model,
                         "quality": float(rng.random() < p), "cost_usd": price * 50, "prompt_tokens": 10,
                         "output_tokens": 40, "split": "test" if i % 5 == 4 else "train"})
    return rows


def train_graded_router(path: Path, seed: int = 0, family: str = "pitstop", **training_data: object) -> str:
    """A router of `family` fitted on `graded_rows`, saved as an artifact at `path`; its version."""
    from routers.artifact import save_router
    from routers.families import build_router
    from routers.features.featurizer import FeatureSpec

    data = to_wide(long_table(graded_rows(40, seed)), name="graded")
    router = build_router(family, data.models, FeatureSpec("static", ("head", "focus"), True, 12), random_encoder())
    return save_router(router.fit(data), path, {"dataset": "graded", "seed": seed, **training_data})["version"]
