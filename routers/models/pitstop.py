"""Pitstop's router: a cross-fitted stack of cheap, complementary base learners, calibrated per model.

Base learners (routers/models/components.py), each predicting every model's success probability:
  - task prior: P(task | prompt) x per-task mean quality (task awareness);
  - logistic regression on the static embedding of the prompt's head;
  - logistic regression on hashed n-grams of the prompt's focus (its last question);
  - expected answer length as difficulty (routers/models/difficulty.py), where the training data has
    answer lengths;
  - optional: logistic regression on all dense features, shrunk neighbour means (see PitstopConfig).
Their out-of-fold predictions (K-fold cross-fitting, so the stacker sees honest inputs) feed, per
model, a small logistic regression on their logits: it learns how much each signal is worth for that
model and returns calibrated probabilities, which the cost-quality trade-off in `choose` needs (it
compares probabilities across models, so their scale matters, not only their order). With task
labels, large tasks get their own stacker (a signal can be worth much on code and nothing on
Winogrande), mixed by P(task | prompt) at request time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from routers.features.featurizer import Features
from routers.models.components import DenseLogit, NeighbourMean, SparseLogit, TaskPrior, logit, sigmoid
from routers.models.difficulty import LengthDifficulty, has_lengths
from routers.models.quality import column_means, soft_label_rows


@dataclass
class PitstopConfig:
    folds: int = 5
    dense_c: float = 0.01
    head_c: float = 1.0
    sparse_c: float = 0.3
    neighbours: int = 25
    stack_c: float = 1.0
    stack_by_task: bool = True  # a stacker per large task (>= stack_task_rows), mixed by P(task | prompt)
    stack_task_rows: int = 300
    # "dense" (all dense features) and "knn" are available; on the training splits used for selection
    # (RouterBench train, LLMRouter train; 3-fold) they did not help and cost latency.
    use: tuple[str, ...] = ("task", "head", "sparse", "length")
    length_c: float = 1.0
    length_alpha: float = 3.0
    seed: int = 0


@dataclass
class PitstopQuality:
    config: PitstopConfig = field(default_factory=PitstopConfig)
    tasks: np.ndarray | None = None  # training task labels, set by the trainer (optional)
    output_tokens: np.ndarray | None = None  # training answer lengths, set by the trainer (optional)

    def _bases(self, x: Features) -> dict[str, object]:
        c = self.config
        bases: dict[str, object] = {}
        task_view = "head" if "head" in x.blocks else None
        if "task" in c.use and self.tasks is not None and task_view is not None:
            bases["task"] = TaskPrior(blocks=(task_view,))
        if "head" in c.use and "head" in x.blocks:
            bases["head"] = DenseLogit(c.head_c, blocks=("head",), standardize=False)
        if "dense" in c.use:
            bases["dense"] = DenseLogit(c.dense_c)
        if "sparse" in c.use and x.sparse is not None:
            bases["sparse"] = SparseLogit(c.sparse_c)
        if "knn" in c.use and "focus" in x.blocks:
            bases["knn"] = NeighbourMean(c.neighbours, "focus")
        if "length" in c.use and has_lengths(self.output_tokens):
            bases["length"] = LengthDifficulty(c.length_c, c.length_alpha, seed=c.seed)
        return bases

    @staticmethod
    def _fit_base(base: object, x: Features, y: np.ndarray, w: np.ndarray, tasks: np.ndarray | None,
                  tokens: np.ndarray | None) -> None:
        if isinstance(base, TaskPrior):
            assert tasks is not None
            base.fit_tasks(x, tasks, y, w)
        elif isinstance(base, LengthDifficulty):
            assert tokens is not None
            base.fit_lengths(x, tokens, y, w)
        else:
            base.fit(x, y, w)  # type: ignore[attr-defined]

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        names = list(self._bases(x))
        oof = {name: np.zeros(y.shape) for name in names}
        folds = KFold(self.config.folds, shuffle=True, random_state=self.config.seed)
        for train_rows, held_rows in folds.split(x.dense):
            bases = self._bases(x)
            tasks = None if self.tasks is None else self.tasks[train_rows]
            tokens = None if self.output_tokens is None else self.output_tokens[train_rows]
            for name, base in bases.items():
                self._fit_base(base, x.rows(train_rows), y[train_rows], weight[train_rows], tasks, tokens)
                oof[name][held_rows] = base.predict(x.rows(held_rows))  # type: ignore[attr-defined]
        self.names = names
        self.bases = self._bases(x)
        for base in self.bases.values():
            self._fit_base(base, x, y, weight, self.tasks, self.output_tokens)
        all_rows = np.arange(len(y))
        self.stack_coef, self.stack_bias = self._fit_stack(oof, y, weight, all_rows)
        self.task_stacks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.config.stack_by_task and "task" in self.bases and self.tasks is not None:
            names = self.bases["task"].names  # type: ignore[attr-defined]
            for t, task in enumerate(names):
                rows = np.flatnonzero(self.tasks == task)
                if len(rows) >= self.config.stack_task_rows:
                    self.task_stacks[t] = self._fit_stack(oof, y, weight, rows)
        self.tasks = self.output_tokens = None  # the artifact keeps models, not training labels

    def _fit_stack(self, oof: dict[str, np.ndarray], y: np.ndarray, weight: np.ndarray,
                   subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = y.shape[1]
        coef = np.zeros((len(self.names), m))
        bias = logit(column_means(y[subset], weight[subset]))
        for j in range(m):
            rows = subset[~np.isnan(y[subset, j])]
            values = y[rows, j]
            if len(rows) == 0 or values.min() == values.max():
                continue
            z = np.column_stack([logit(oof[n][rows, j]) for n in self.names])
            xs, labels, w = soft_label_rows(z, values, weight[rows, j])
            fitted = LogisticRegression(C=self.config.stack_c, max_iter=2000).fit(xs, labels, sample_weight=w)
            coef[:, j], bias[j] = fitted.coef_[0], fitted.intercept_[0]
        return coef, bias

    def base_predictions(self, x: Features) -> dict[str, np.ndarray]:
        return {name: base.predict(x) for name, base in self.bases.items()}  # type: ignore[attr-defined]

    def predict(self, x: Features) -> np.ndarray:
        logits = np.stack([logit(p) for p in self.base_predictions(x).values()])  # (bases, n, m)
        z = self.stack_bias + np.einsum("bnm,bm->nm", logits, self.stack_coef)
        if getattr(self, "task_stacks", None):
            p_task = self.bases["task"].task_probabilities(x)  # type: ignore[attr-defined]
            rest = 1.0 - sum(p_task[:, t] for t in self.task_stacks)
            mixed = z * rest[:, None]
            for t, (coef, bias) in self.task_stacks.items():
                mixed += p_task[:, [t]] * (bias + np.einsum("bnm,bm->nm", logits, coef))
            z = mixed
        return sigmoid(z)
