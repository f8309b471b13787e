"""What a request holds of its key's budget while it runs (gateway/limits/base.py): its worst case, the
costliest deployment it may be sent to, at its prompt (estimated, its images as that deployment counts them:
gateway/image_tokens.py; all at the costliest prompt price, a prompt-cache write's where it is above the input
price: no discount in a worst case, and at the long-context tier the estimate is in) and the most it may
answer, at its resolved prices (ModelEntry._priced), for every answer it asks for; and the same of its key's
team's budget, where the team has one. Settled with its real cost when it ends (gateway/outcomes.py)."""

from __future__ import annotations

from dataclasses import replace

from gateway.auth import Caller
from gateway.deployments import DeploymentPool
from gateway.limits.base import DEFAULT_HOLD_TTL_S, Hold
from gateway.limits.periods import current_period
from gateway.pricing import worst_case_cost
from gateway.request_body import ProxyRequest
from gateway.routing import RouteTable, prompt_estimate

DEFAULT_MAX_OUTPUT_TOKENS = 4096  # a model's answer without max_tokens, where model_info gives none


def answers_asked(request: ProxyRequest) -> int:
    """How many answers one request asks for: `n`, times a completion's batch of prompts."""
    n = request.body.get("n")
    count = n if type(n) is int and n > 0 else 1
    prompt = request.body.get("prompt")
    if request.kind == "completion" and isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        count *= len(prompt)
    return count


def budget_hold(caller: Caller, request: ProxyRequest, routes: RouteTable, pool: DeploymentPool,
                request_id: str, timeout_s: float, attempts: int) -> Hold | None:
    """The request's hold, in its key's budget period; None where neither its key nor the key's team has a
    budget."""
    team_budget = caller.team.budget_usd if caller.team is not None else None
    if caller.key_id is None or (caller.budget_usd is None and team_budget is None):
        return None
    group = routes.groups.get(request.model)
    models = group.group.models if group is not None else [request.model]
    asked = request.body.get("max_completion_tokens") or request.body.get("max_tokens")
    worst = 0.0
    for model in models:
        for deployment in pool.by_model.get(model, ()):
            prompt_tokens = prompt_estimate(request, [deployment.image_tokens])  # its images as it counts them
            output = 0 if request.kind == "embedding" else (
                asked if type(asked) is int else deployment.info.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS)
            worst = max(worst, worst_case_cost(deployment.info, prompt_tokens, output))
    # Past every attempt's timeout, so only a replica that died leaves a hold to lapse.
    return Hold(request_id, worst * answers_asked(request), max(DEFAULT_HOLD_TTL_S, timeout_s * attempts + 60),
                current_period(caller.budget_period))


def team_hold(caller: Caller, hold: Hold | None) -> Hold | None:
    """The same hold on its key's team's budget, in the team's budget period (it may not be the key's);
    None where the team has no budget."""
    team = caller.team
    if hold is None or team is None or team.budget_usd is None:
        return None
    return replace(hold, period=current_period(team.budget_period))
