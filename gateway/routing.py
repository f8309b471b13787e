"""Which model serves a request: a model name is served as asked; a route group's name asks its
router (routers/) to choose among the group's models."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.server.errors import not_found
from gateway.config import RouteGroup, Settings
from gateway.request_body import ProxyRequest
from routers.base import Candidate, Router, RoutingRequest
from routers.choice import RoutingDecision, choose
from routers.registry import make_router

log = logging.getLogger("pitstop.routing")


@dataclass(frozen=True)
class Route:
    route_group: str | None
    model_name: str
    decision: RoutingDecision | None = None


@dataclass
class GroupRouter:
    group: RouteGroup
    router: Router
    candidates: list[Candidate]


def estimate_tokens(text: str) -> int:
    # About four characters a token for English text; routers only need the order of magnitude.
    return len(text) // 4 + 1


class RouteTable:
    def __init__(self, settings: Settings) -> None:
        self.models = set(settings.model_names)
        entries = {m.model_name: m for m in settings.model_list}
        self.groups: dict[str, GroupRouter] = {}
        for group in settings.route_groups:
            candidates = [Candidate(name, entries[name].model_info.input_cost_per_token,
                                    entries[name].model_info.output_cost_per_token, entries[name].model_info.tier)
                          for name in group.models]
            router = make_router(group.router, group.router_artifact)
            self.groups[group.name] = GroupRouter(group, router, candidates)
            log.info("route group %s: router %s v%s over %s", group.name, router.name, router.version,
                     ", ".join(group.models))

    @property
    def names(self) -> list[str]:
        return [*self.groups, *sorted(self.models)]

    def resolve(self, request: ProxyRequest) -> Route:
        if request.model in self.models:
            return Route(None, request.model)
        group = self.groups.get(request.model)
        if group is None:
            raise not_found(f"the model {request.model!r} does not exist; available: {', '.join(self.names)}",
                            "model", "model_not_found")
        preference = group.group.cost_preference if request.cost_preference is None else request.cost_preference
        routing_request = RoutingRequest(request.prompt_text, estimate_tokens(request.prompt_text),
                                         request.session_id)
        estimate = group.router.estimate(routing_request, group.candidates)
        decision = choose(estimate, group.candidates, routing_request.prompt_tokens, preference,
                          group.router.name, group.router.version)
        return Route(group.group.name, decision.model, decision)
