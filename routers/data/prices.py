"""Per-model token prices learned from real per-prompt costs: cost = a x prompt tokens + b x answer tokens.

Non-negative least squares per model; the fit's relative error is kept so a report can show how well
price x tokens explains the real cost. Where a source has costs but no answer lengths (LLMRouter),
the answer is taken to be DEFAULT_OUTPUT_TOKENS long, the length the choice rule assumes for a router
that predicts none, so the fitted output price reproduces the cost the choice will see."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from routers.choice import DEFAULT_OUTPUT_TOKENS
from routers.data.table import Prices, RoutingData


def fit_prices(data: RoutingData) -> tuple[Prices, dict[str, float]]:
    """Prices in USD per token, and each model's mean absolute relative error of the fitted cost."""
    inputs, outputs, errors = {}, {}, {}
    for j, model in enumerate(data.models):
        answer = np.where(np.isnan(data.output_tokens[:, j]), DEFAULT_OUTPUT_TOKENS, data.output_tokens[:, j])
        ok = ~np.isnan(data.cost[:, j]) & ~np.isnan(data.prompt_tokens)
        if ok.sum() < 2:
            continue
        design = np.column_stack([data.prompt_tokens[ok], answer[ok]])
        scale = design.max(axis=0) + 1.0  # conditioning: tokens are in the thousands, prices ~1e-6
        coef, _ = nnls(design / scale, data.cost[ok, j])
        coef = coef / scale
        fitted = design @ coef
        inputs[model], outputs[model] = float(coef[0]), float(coef[1])
        errors[model] = float(np.mean(np.abs(fitted - data.cost[ok, j]) / np.maximum(data.cost[ok, j], 1e-12)))
    return Prices(inputs, outputs), errors
