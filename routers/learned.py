"""A trained router: featurizer + quality model + answer-length model over a fixed list of models.

Implements the Router protocol (routers/base.py). `estimate_batch` is the offline path used by the
evaluation harness (same models, batched features); `estimate` is the per-request path the gateway
calls. Candidates the router was not trained on get the documented prior (routers/prior.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from routers.base import Candidate, QualityEstimate, RoutingRequest
from routers.choice import typical_cost
from routers.data.table import RoutingData
from routers.features.featurizer import Features, Featurizer
from routers.models.length import LengthModel
from routers.models.quality import QualityModel
from routers.prior import prior_output_tokens, prior_quality


@dataclass
class LearnedRouter:
    name: str
    family: str
    models: list[str]
    featurizer: Featurizer
    quality_model: QualityModel
    length_model: LengthModel
    version: str = "untrained"
    manifest: dict[str, object] = field(default_factory=dict)
    # Mean prompt and answer lengths (per model) of the training traffic: the reference cost's request.
    typical_prompt_tokens: float | None = None
    typical_output_tokens: dict[str, float] = field(default_factory=dict)

    def fit(self, data: RoutingData) -> LearnedRouter:
        assert data.models == self.models
        features = self.featurizer.transform(data.prompts)
        return self.fit_features(features, data)

    def fit_features(self, features: Features, data: RoutingData) -> LearnedRouter:
        if hasattr(self.quality_model, "tasks"):  # task-aware families learn from the task labels
            self.quality_model.tasks = data.tasks
        if hasattr(self.quality_model, "output_tokens"):  # and answer lengths, as a difficulty signal
            self.quality_model.output_tokens = data.output_tokens
        self.quality_model.fit(features, data.quality, data.weight)
        self.length_model.fit(features, data.output_tokens)
        self.typical_prompt_tokens = float(np.mean(data.prompt_tokens))
        counts = (~np.isnan(data.output_tokens)).sum(axis=0)  # a source without answers has none
        sums = np.nansum(data.output_tokens, axis=0)
        self.typical_output_tokens = {m: float(s / c) for m, s, c in zip(self.models, sums, counts, strict=True) if c}
        return self

    def reference_cost(self, candidates: list[Candidate]) -> float | None:
        if getattr(self, "typical_prompt_tokens", None) is None:  # artifacts from before this field
            return None
        # A route group asks with the same candidates every time: computed once per candidate set.
        cache: dict[tuple[Candidate, ...], float] = self.__dict__.setdefault("_reference_costs", {})
        key = tuple(candidates)
        if key not in cache:
            known = list(self.typical_output_tokens.values())
            cache[key] = typical_cost(candidates, self.typical_prompt_tokens,  # type: ignore[arg-type]
                                      self.typical_output_tokens, prior_output_tokens(known))
        return cache[key]

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_reference_costs"}  # not saved in artifacts

    def predict_features(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        return self.quality_model.predict(features), self.length_model.predict(features)

    def estimate_batch(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(quality, output tokens), each (len(prompts), len(self.models))."""
        return self.predict_features(self.featurizer.transform(prompts))

    def estimate(self, request: RoutingRequest, candidates: list[Candidate]) -> QualityEstimate:
        quality, tokens = self.predict_features(self.featurizer.transform_one(request.prompt))
        return estimate_for(self.models, quality[0], tokens[0], candidates, self.reference_cost(candidates))


def estimate_for(models: list[str], quality: np.ndarray, tokens: np.ndarray, candidates: list[Candidate],
                 reference_cost_usd: float | None = None) -> QualityEstimate:
    """Per-candidate estimate from per-model predictions; unknown candidates get the prior."""
    column = {m: j for j, m in enumerate(models)}
    known = [c for c in candidates if c.model in column]
    known_q = [float(quality[column[c.model]]) for c in known]
    known_t = [float(tokens[column[c.model]]) for c in known]
    out_q, out_t = {}, {}
    for c in candidates:
        if c.model in column:
            out_q[c.model] = float(quality[column[c.model]])
            out_t[c.model] = float(tokens[column[c.model]])
        else:
            out_q[c.model] = prior_quality(c.tier, known_q)
            out_t[c.model] = prior_output_tokens(known_t)
    return QualityEstimate(out_q, out_t, reference_cost_usd)
