"""The documented prior for candidates a trained router has no data for (a model added to the config
after training), so routing keeps working instead of failing.

Quality: by the candidate's configured tier, relative to the trained models' predictions for this very
request: "strong" gets the best prediction among them, "medium" the median, "weak" the lowest. The
prior thus lives on the same scale as the learned estimates and follows the request's difficulty.
Answer length: the median prediction of the trained models. With no trained model among the
candidates at all, TierPriorRouter's fixed values apply (routers/tier_prior.py)."""

from __future__ import annotations

import numpy as np

from routers.choice import DEFAULT_OUTPUT_TOKENS
from routers.tier_prior import TIER_QUALITY


def prior_quality(tier: str, known: list[float]) -> float:
    if not known:
        return TIER_QUALITY.get(tier, TIER_QUALITY["medium"])
    if tier == "strong":
        return float(max(known))
    if tier == "weak":
        return float(min(known))
    return float(np.median(known))


def prior_output_tokens(known: list[float]) -> float:
    return float(np.median(known)) if known else DEFAULT_OUTPUT_TOKENS
