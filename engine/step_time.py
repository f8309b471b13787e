"""Step-time models: how long one engine step takes on a GPU, from the step's shape alone.

The simulated runner advances a virtual clock by `predict(batch.shape)`. Two models: a linear one
fitted to measured steps (`engine.profile`), and a roofline one from GPU and model specs
(`engine.roofline`). Either is saved as a JSON profile (see `save_profile`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.batch import StepShape
from engine.nnls import nnls
from engine.outputs import StepRecord


class StepTimeModel(Protocol):
    def predict(self, shape: StepShape) -> float:
        """Seconds one engine step of this shape takes."""
        ...

    def to_json(self) -> dict:
        """`{"kind": ..., "params": ..., "model": ...}`: the model part of a profile file."""
        ...


@dataclass(frozen=True)
class FitQuality:
    """Relative error |predicted - measured| / measured over a set of step records."""

    median_rel_err: float
    p90_rel_err: float
    n_records: int


def fit_quality(model: StepTimeModel, records: list[StepRecord]) -> FitQuality:
    measured = np.array([r.duration_s for r in records])
    predicted = np.array([model.predict(r.shape) for r in records])
    rel = np.abs(predicted - measured) / np.maximum(measured, 1e-12)
    if not len(rel):
        return FitQuality(float("nan"), float("nan"), 0)
    return FitQuality(float(np.median(rel)), float(np.percentile(rel, 90)), len(rel))


# The shape features a linear model weighs, in coefficient order (constant first).
def _features(shape: StepShape) -> tuple[float, ...]:
    return (1.0, shape.prefill_tokens, shape.prefill_seqs, shape.prefill_attention, shape.decode_seqs,
            shape.kv_tokens, shape.draft_tokens)


@dataclass(frozen=True)
class LinearStepTime:
    """t = c0 + per prefill token + per prefill sequence + per unit of prefill attention
    (new tokens x context) + per decoding sequence + per token of KV read + per draft token checked
    (speculative decoding). All coefficients >= 0. A profile without drafted steps has no
    `c_draft_token` (None): a draft is then priced as a prefill token, a query row through every layer.

    `c_kv_token_moved`: seconds per token of KV copied to or from the host tier (engine/host_cache.py),
    timed on its own by the profile (the copies run before the forward pass, so they add); None for a
    profile made without a host tier, which cannot price one. `c_disk_token_read`: seconds per token of
    KV read from the disk tier (engine/disk_store.py) before that copy, timed with the page cache dropped;
    None for a profile made before the disk tier, which cannot price one."""

    c0: float = 0.0
    c_prefill_token: float = 0.0
    c_prefill_seq: float = 0.0
    c_attn: float = 0.0
    c_decode_seq: float = 0.0
    c_kv_token: float = 0.0
    c_draft_token: float | None = None
    c_kv_token_moved: float | None = None
    c_disk_token_read: float | None = None
    # What was profiled: name, shape, and `num_blocks` (the KV capacity the steps ran with).
    model: dict = field(default_factory=dict, compare=False)

    def predict(self, shape: StepShape) -> float:
        return (self.c0 + self.c_prefill_token * shape.prefill_tokens + self.c_prefill_seq * shape.prefill_seqs
                + self.c_attn * shape.prefill_attention + self.c_decode_seq * shape.decode_seqs
                + self.c_kv_token * shape.kv_tokens + self.draft_token_cost * shape.draft_tokens
                + (self.c_kv_token_moved or 0.0) * shape.kv_tokens_moved
                + (self.c_disk_token_read or 0.0) * shape.disk_tokens_read)

    @property
    def prices_kv_transfers(self) -> bool:
        return self.c_kv_token_moved is not None

    @property
    def prices_disk_reads(self) -> bool:
        return self.c_disk_token_read is not None and self.prices_kv_transfers

    @property
    def draft_token_cost(self) -> float:
        return self.c_prefill_token if self.c_draft_token is None else self.c_draft_token

    @property
    def coefficients(self) -> tuple[float, ...]:
        """In `_features`' order; a draft token's as priced."""
        return (self.c0, self.c_prefill_token, self.c_prefill_seq, self.c_attn, self.c_decode_seq,
                self.c_kv_token, self.draft_token_cost)

    @classmethod
    def fit(cls, records: list[StepRecord], model: dict | None = None) -> LinearStepTime:
        """Non-negative least squares on relative error: each row is divided by its measured time,
        so a 5 ms decode step counts as much as a 200 ms prefill (absolute least squares would let the
        big prefills dominate and miss the decode steps that make up most of a run)."""
        records = [r for r in records if r.duration_s > 0]
        if not records:
            raise ValueError("no step records with a positive duration to fit")
        x = np.array([_features(r.shape) for r in records], dtype=float)
        y = np.array([r.duration_s for r in records])
        # A feature that never varies from zero cannot be fitted: its coefficient stays 0.
        coef = nnls(x / y[:, None], np.ones(len(y)))
        # Dividing by the noisy measurement biases predictions low; reweighting by the prediction
        # instead (a few rounds of iteratively reweighted least squares) removes most of that bias.
        for _ in range(8):
            predicted = np.maximum(x @ coef, 1e-12)
            coef = nnls(x / predicted[:, None], y / predicted)
        fitted = [float(c) for c in coef]
        if not x[:, -1].any():  # no drafted steps: a draft is priced as a prefill token
            fitted[-1] = None  # type: ignore[call-overload]
        return cls(*fitted, model=dict(model or {}))

    def to_json(self) -> dict:
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {"kind": "linear", "params": params, "model": dict(self.model)}

    @classmethod
    def from_json(cls, profile: dict) -> LinearStepTime:
        return cls(**profile["params"], model=dict(profile.get("model") or {}))


# ---- profile files ----------------------------------------------------------------------------


def model_from_json(profile: dict) -> StepTimeModel:
    kind = profile.get("kind")
    if kind == "linear":
        return LinearStepTime.from_json(profile)
    if kind == "roofline":
        from engine.roofline import RooflineStepTime

        return RooflineStepTime.from_json(profile)
    raise ValueError(f"unknown step-time profile kind {kind!r}; expected 'linear' or 'roofline'")


def save_profile(path: str | Path, model: StepTimeModel, *, source: dict | None = None,
                 fit: FitQuality | None = None) -> dict:
    """Write `{"kind", "params", "model", "source", "fit"}` as JSON; returns what was written."""
    profile = model.to_json() | {"source": dict(source or {}), "fit": asdict(fit) if fit else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2) + "\n")
    return profile


def load_profile(path: str | Path, field: str | None = None) -> StepTimeModel:
    """The step-time profile at `path`; with `field` (the setting that named it), a file that is not one is a
    ValueError naming the setting."""
    try:
        return model_from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if field is None:
            raise
        raise ValueError(f"{field} {str(path)!r} is not a step-time profile: {exc}") from exc
