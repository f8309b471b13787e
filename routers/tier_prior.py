"""The rule that stands in for a learned router, and the prior for models without training data:
each model's quality is a fixed value by its configured tier."""

from __future__ import annotations

from routers.base import Candidate, QualityEstimate, RoutingRequest

TIER_QUALITY = {"weak": 0.6, "medium": 0.8, "strong": 1.0}


class TierPriorRouter:
    name = "tier-prior"
    version = "1"

    def estimate(self, request: RoutingRequest, candidates: list[Candidate]) -> QualityEstimate:
        return QualityEstimate({c.model: TIER_QUALITY.get(c.tier, TIER_QUALITY["medium"]) for c in candidates})
