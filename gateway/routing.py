"""Which model serves a request: a model name is served as asked; a route group's name asks its
router (routers/) to choose among the group's models.

A learned router knows models by the names in its training data; a deployment's
`model_info.router_model` says which of them it is (default: its model_name). The decision is mapped
back to the group's model names, so outcome rows and headers name what was actually called."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.server.errors import bad_request, not_found
from gateway.config import MEDIA_PATHS, Settings
from gateway.pricing import price_steps
from gateway.request_body import ProxyRequest
from gateway.route_group_config import RouteGroup
from gateway.wildcards import WildcardModels
from routers.base import Candidate, Router, RoutingRequest
from routers.choice import DEFAULT_OUTPUT_TOKENS, RoutingDecision, choose, predicted_cost
from routers.exploration import explore
from routers.registry import make_router
from routers.verify import VerifyPolicy, VerifyRates, expected_overhead

if TYPE_CHECKING:
    from gateway.image_tokens import ImageTokens
    from gateway.model_list_config import ModelEntry, ModelInfo
    from gateway.route_calibration import CalibrationState

log = logging.getLogger("pitstop.routing")


@dataclass(frozen=True)
class Route:
    route_group: str | None
    model_name: str
    decision: RoutingDecision | None = None
    # The route group's models' prices: routing's baseline prices the served call's tokens at its costliest's.
    prices: Mapping[str, ModelInfo] | None = None


@dataclass
class Tally:
    requests: int = 0
    total: float = 0.0

    def add(self, value: float) -> None:
        self.requests += 1
        self.total += value

    def to_dict(self) -> dict[str, float | int | None]:
        return {"requests": self.requests, "average": self.total / self.requests if self.requests else None}


@dataclass
class GroupRouter:
    group: RouteGroup
    router: Router  # replaced whole on hot reload (gateway/router_artifacts.py); never mutated
    candidates: list[Candidate]  # named as the router knows them
    model_for: dict[str, str]  # router's name -> the group's model_name
    artifact: Path | None = None
    # The group's cost preference now: its config's, until a calibration (gateway/route_calibration.py)
    # sets one from its traffic; a request's own preference still overrides it.
    cost_preference: float = 0.0
    calibration: CalibrationState | None = None  # the last calibration run, for /v1/models and /metrics
    # What the requests routed since that run got, in the target's terms: how close it lands live.
    since_calibration: Tally = field(default_factory=Tally)
    verify: VerifyPolicy | None = None  # check short answers before serving them (gateway/verify.py)
    verify_priced: list[Candidate] = field(default_factory=list)  # its models from outside the group
    verify_hold_chars: int = 0  # how long a streamed reply is held back to be verified (config.GroupVerify)
    verify_rates: VerifyRates | None = None  # what the last calibration counted verifying at
    infos: dict[str, ModelInfo] = field(default_factory=dict)  # the group's models' prices, by model_name

    def decide(self, request: RoutingRequest, cost_preference: float) -> RoutingDecision:
        router = self.router  # one router for the whole decision, even if a reload swaps it meanwhile
        estimate = router.estimate(request, self.candidates)
        decision = choose(estimate, self.candidates, request.prompt_tokens, cost_preference,
                          router.name, router.version)
        names = self.model_for
        decision = replace(decision, model=names[decision.model],
                       scores={names[m]: v for m, v in decision.scores.items()},
                       quality={names[m]: v for m, v in decision.quality.items()},
                       predicted_cost_usd={names[m]: v for m, v in decision.predicted_cost_usd.items()})
        return explore(decision, self.group.exploration) if self.group.explore_epsilon else decision

    def served(self, decision: RoutingDecision, prompt_tokens: int) -> None:
        """A request goes out on the router's choice (not on a session's model): count it toward `since`,
        as the calibration counts it (with the group's `verify:`, at the rates it counted)."""
        calibrated = self.calibration
        if calibrated is None:
            return
        pick, cost = decision.model, decision.predicted_cost_usd[decision.model]
        served_by_target = float(pick == calibrated.model)
        if self.verify is not None and self.verify_rates is not None:
            costs = {**{c.model: predicted_cost(c, prompt_tokens, DEFAULT_OUTPUT_TOKENS) for c in self.verify_priced},
                     **decision.predicted_cost_usd}
            extra, escalated = expected_overhead(self.verify, self.verify_rates, pick, decision.quality[pick], costs)
            cost += float(extra)
            served_by_target += float(escalated) * ((calibrated.model == self.verify.escalate_to) - served_by_target)
        scale = calibrated.real_over_predicted or 1.0  # an average cost in the target's (real) dollars
        self.since_calibration.add(scale * cost if calibrated.kind == "avg_cost" else served_by_target)


def estimate_tokens(text: str) -> int:
    # About four characters a token for English text; routers only need the order of magnitude.
    return len(text) // 4 + 1


def prompt_estimate(request: ProxyRequest, image_rules: Sequence[ImageTokens] = ()) -> int:
    """The whole prompt's tokens, estimated from its characters (every message, not only what routers read), its
    images as `image_rules` count them (the deployments' it may go to: gateway/image_tokens.py)."""
    return request.chars_on(image_rules) // 4 + 1


def build_group(settings: Settings, group: RouteGroup) -> GroupRouter:
    """A route group's router over its models, priced by their model_info (a model's last entry's)."""
    entries = {m.model_name: m for m in settings.model_list}
    infos = {name: entries[name].model_info for name in group.models}
    known_as = {name: info.router_model or name for name, info in infos.items()}
    candidates = [Candidate(known_as[name], info.input_cost_per_token, info.output_cost_per_token, info.tier,
                            price_steps(info)) for name, info in infos.items()]
    artifact = str(settings.resolve_path(group.router_artifact)) if group.router_artifact else None
    router = make_router(group.router, artifact)
    model_for = {alias: name for name, alias in known_as.items()}
    verify = settings.verify_policy(group)
    outside = [] if verify is None else [name for name in dict.fromkeys((*verify.verifiers, verify.escalate_to))
                                         if name not in infos]
    verify_priced = [Candidate(name, entries[name].model_info.input_cost_per_token,
                               entries[name].model_info.output_cost_per_token,
                               price_steps=price_steps(entries[name].model_info)) for name in outside]
    log.info("route group %s: router %s v%s over %s", group.name, router.name, router.version,
             ", ".join(group.models))
    return GroupRouter(group, router, candidates, model_for, Path(artifact) if artifact else None,
                       group.cost_preference, verify=verify, verify_priced=verify_priced,
                       verify_hold_chars=group.verify.hold_chars if group.verify else 0, infos=infos)


def group_models(settings: Settings, group: RouteGroup) -> list[str]:
    """The models a group's router is priced by: its own, and its verifiers and escalation target."""
    verify = settings.verify_policy(group)
    return [*group.models, *(() if verify is None else (*verify.verifiers, verify.escalate_to))]


def changed_groups(old: Settings, new: Settings) -> set[str]:
    """Route groups added, removed, or whose config or whose models' model_info differ from `old` to `new`."""
    before = {group.name: group for group in old.route_groups}
    after = {group.name: group for group in new.route_groups}
    return {name for name in before.keys() | after.keys()
            if before.get(name) != after.get(name)
            or any(_info(old, model) != _info(new, model) for model in group_models(new, after[name]))}


def _info(settings: Settings, name: str) -> object:
    entries = [m for m in settings.model_list if m.model_name == name]
    return entries[-1].model_info if entries else None


class RouteTable:
    def __init__(self, settings: Settings) -> None:
        self.models = set(settings.model_names)
        self.embedding_models = settings.embedding_models  # serve embeddings only
        self.embeddings_served_by = settings.embeddings_served_by
        self.rerank_models = settings.rerank_models  # serve /v1/rerank only (gateway/rerank.py)
        self.classify_models = settings.classify_models  # serve /classify only (gateway/vllm_endpoints.py)
        self.moderation_models = settings.moderation_models  # serve /v1/moderations only (gateway/moderation.py)
        self.media_models = settings.media_models  # audio and image models by mode (gateway/media.py)
        self.realtime_models = settings.realtime_models  # serve /v1/realtime only (gateway/realtime.py)
        self.wildcards = WildcardModels(settings.wildcards)  # names they match become models on first use
        self.groups: dict[str, GroupRouter] = {group.name: build_group(settings, group)
                                               for group in settings.route_groups}

    def prepared_groups(self, old: Settings, new: Settings) -> dict[str, GroupRouter]:
        """The route groups of a reloaded config (gateway/config_reload.py): a group whose config and whose
        models' model_info are unchanged keeps its router (hot-reloaded versions, calibration, counts); the
        others are built afresh (their artifacts read: call off the event loop)."""
        changed = changed_groups(old, new)
        return {group.name: build_group(new, group) if group.name in changed else self.groups[group.name]
                for group in new.route_groups}

    @property
    def names(self) -> list[str]:
        return [*self.groups, *sorted(self.models)]

    def adopt(self, name: str) -> bool:
        """Whether `name` is a model: a listed one, or one a wildcard matches (made a model here, its
        deployment built, the first time it is asked for)."""
        if name in self.models:
            return True
        if name in self.groups or not self.wildcards:
            return False
        entry = self.wildcards.match(name)
        if entry is None:
            return False
        self._add_adopted(name, entry)
        return True

    def _add_adopted(self, name: str, entry: ModelEntry) -> None:
        self.models.add(name)
        if entry.serves_embeddings:
            self.embeddings_served_by.add(name)
        if entry.model_info.mode == "moderation":  # kept out of chats as a listed one is
            self.moderation_models.add(name)
        if entry.model_info.mode in self.media_models:
            self.media_models[entry.model_info.mode].add(name)

    def refresh_models(self, settings: Settings) -> None:
        """The listed models' names and modes from a reloaded model list (gateway/config_reload.py); the
        route groups stay (a reload that changes them is refused), and so do the names wildcards adopted."""
        self.models = set(settings.model_names)
        self.embedding_models = settings.embedding_models
        self.embeddings_served_by = settings.embeddings_served_by
        self.rerank_models = settings.rerank_models
        self.classify_models = settings.classify_models
        self.moderation_models = settings.moderation_models
        self.media_models = settings.media_models
        self.realtime_models = settings.realtime_models
        for name, entry in self.wildcards.adopted.items():
            if name not in self.models:
                self._add_adopted(name, entry)

    def resolve(self, request: ProxyRequest) -> Route:
        if request.model in self.rerank_models:
            raise bad_request(f"the model {request.model!r} is a reranker (model_info.mode: rerank): send it to "
                              "/v1/rerank", "model", "model_not_supported")
        if request.model in self.classify_models:
            raise bad_request(f"the model {request.model!r} is a classifier (model_info.mode: classify): send it to "
                              "/classify", "model", "model_not_supported")
        if request.model in self.moderation_models:
            raise bad_request(f"the model {request.model!r} is a moderation model (model_info.mode: moderation): "
                              "send it to /v1/moderations", "model", "model_not_supported")
        if request.model in self.realtime_models:
            raise bad_request(f"the model {request.model!r} is a realtime model (model_info.mode: realtime): connect "
                              "to it over the /v1/realtime WebSocket", "model", "model_not_supported")
        for mode, names in self.media_models.items():
            if request.model in names:
                raise bad_request(f"the model {request.model!r} is an {mode} model (model_info.mode: {mode}): send it "
                                  f"to {MEDIA_PATHS[mode]}", "model", "model_not_supported")
        if request.kind == "embedding":
            return self._embeddings_model(request.model)
        if request.model in self.embedding_models:
            raise bad_request(f"the model {request.model!r} serves embeddings only: send it to /v1/embeddings",
                              "model", "model_not_supported")
        if request.model in self.models:
            return Route(None, request.model)
        group = self.groups.get(request.model)
        if group is None:
            if self.adopt(request.model):
                return Route(None, request.model)
            raise not_found(f"the model {request.model!r} does not exist; available: {', '.join(self.names)}",
                            "model", "model_not_found")
        preference = group.cost_preference if request.cost_preference is None else request.cost_preference
        routing_request = RoutingRequest(request.prompt_text, estimate_tokens(request.prompt_text),
                                         request.session_id)
        decision = group.decide(routing_request, preference)
        return Route(group.group.name, decision.model, decision, group.infos)

    def _embeddings_model(self, model: str) -> Route:
        if model in self.embeddings_served_by or (model not in self.models and self.adopt(model)
                                                   and model in self.embeddings_served_by):
            return Route(None, model)
        served = ", ".join(sorted(self.embeddings_served_by)) or "none is configured"
        if model in self.groups:
            raise bad_request(f"{model!r} is a route group, which routes chat and completion requests; send "
                              f"embeddings to a model by name (models that take them: {served})", "model",
                              "model_not_supported")
        if model in self.models:
            raise bad_request(f"the model {model!r} runs on Pitstop's engine, which serves no embeddings (models "
                              f"that take them: {served})", "model", "model_not_supported")
        raise not_found(f"the model {model!r} does not exist; models that take embeddings: {served}", "model",
                        "model_not_found")
