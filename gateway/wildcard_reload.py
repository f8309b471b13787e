"""Wildcard entries (gateway/wildcards.py) read again on a reload (gateway/config_reload.py): the patterns
are replaced; a name adopted through a pattern that is unchanged (the same entry is still the most
specific one matching it) keeps its deployments, as an unchanged model_list entry does; one adopted
through a pattern removed or changed, or now matched by another, is retired like a removed entry (no new
request at once, closed once its requests in flight end) and adopted afresh on its next request if a
pattern still matches it. A name now listed in model_list is the model list's (plan_reload)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import Settings
from gateway.deployment_build import adopt_wildcard
from gateway.deployments import Deployment
from gateway.wildcards import WildcardModels, WildcardPattern

if TYPE_CHECKING:
    from gateway.state import GatewayState


@dataclass
class WildcardPlan:
    table: WildcardModels  # the new patterns, with the names kept
    dropped: list[str]  # adopted names no longer served as they were, not now listed


def changed_patterns(old: Settings, new: Settings) -> list[str]:
    """The wildcard entries added, removed or changed, by their model_name."""
    before = {w.model_name: w.model_dump() for w in old.wildcards}
    after = {w.model_name: w.model_dump() for w in new.wildcards}
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def plan_wildcards(current: WildcardModels, new: Settings) -> WildcardPlan:
    table = WildcardModels(new.wildcards, current.max_models)
    listed = set(new.model_names)
    dropped = []
    for name, entry in current.adopted.items():
        before, after = _pattern_of(current.patterns, name), _pattern_of(table.patterns, name)
        if name in listed:
            continue
        if before is not None and after is not None and before.entry.model_dump() == after.entry.model_dump():
            table.adopted[name] = entry
        else:
            dropped.append(name)
    return WildcardPlan(table, dropped)


def dropped_deployments(state: GatewayState, plan: WildcardPlan) -> list[Deployment]:
    return [d for name in plan.dropped for d in state.pool.by_model.get(name, ())]


def apply_wildcards(state: GatewayState, plan: WildcardPlan, new: Settings) -> None:
    """Swaps the patterns in (no await: within the model list's swap, before the route table's refresh)."""
    for name in plan.dropped:
        state.pool.by_model.pop(name, None)
    plan.table.adopt = functools.partial(adopt_wildcard, state.pool, new)  # built with the new settings
    state.routes.wildcards = plan.table


def _pattern_of(patterns: list[WildcardPattern], name: str) -> WildcardPattern | None:
    """The pattern serving `name`: the first (most specific) that matches, as WildcardModels.match picks."""
    return next((p for p in patterns if p.matched(name) is not None), None)
