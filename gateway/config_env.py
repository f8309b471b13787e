"""API-provider models join the config only when their keys are in the environment: `os.environ/NAME`
values are read from it, an entry naming an unset variable is left out, and the route groups,
verification settings, fallback chains and hedged models that named it go on without it."""

from __future__ import annotations

import logging
import os
from typing import Any

from gateway.fallback_config import FallbacksConfig

log = logging.getLogger("pitstop.config")

ENV_PREFIX = "os.environ/"


def resolve_env(value: Any, path: str, missing: list[str]) -> Any:
    """Replace `os.environ/NAME` strings; remember where a variable is unset."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            missing.append(f"{path} ({name})")
            return None
        return os.environ[name]
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{path}.{k}" if path else k, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{path}.{i}", missing) for i, v in enumerate(value)]
    return value


def drop_models_without_keys(raw: dict) -> dict:
    """API-provider models join only when their keys are in the environment."""
    if not isinstance(raw.get("model_list") or [], list) or not isinstance(raw.get("route_groups") or [], list):
        return raw  # validation names the field
    kept, dropped = [], []
    for i, entry in enumerate(raw.get("model_list") or []):
        missing: list[str] = []
        resolved = resolve_env(entry, f"model_list.{i}", missing)
        if missing:
            dropped.append((entry.get("model_name") if isinstance(entry, dict) else None, missing))
        else:
            kept.append(resolved)
    for name, missing in dropped:
        log.info("model %s skipped: environment variable not set for %s", name, ", ".join(missing))
    dropped_names = {name for name, _ in dropped}
    groups = []
    for group in raw.get("route_groups") or []:
        if isinstance(group, dict) and isinstance(group.get("models"), list):
            group = {**group, "models": [m for m in group["models"] if m not in dropped_names]}
        if isinstance(group, dict) and isinstance(group.get("verify"), dict) and dropped_names:
            group = {**group, "verify": _drop_from_verify(group["verify"], dropped_names, group.get("name"))}
        groups.append(group)
    trimmed = {}
    fallbacks = raw.get("fallbacks")
    if isinstance(fallbacks, dict) and dropped_names:  # validated whole later; only the chains are trimmed
        trimmed["fallbacks"] = {**fallbacks, **{key: _drop_from_chains(fallbacks[key], dropped_names)
                                                for key in ("on_error", "on_context_window") if key in fallbacks}}
    hedging = raw.get("hedging")
    if isinstance(hedging, dict) and isinstance(hedging.get("models"), list) and dropped_names:
        trimmed["hedging"] = {**hedging, "models": [m for m in hedging["models"] if m not in dropped_names]}
    return {**raw, "model_list": kept, "route_groups": groups, **trimmed}


def _drop_from_chains(chains: Any, dropped: set[str]) -> Any:
    """Fallback chains without the models left out for want of a key (the shape is validated later)."""
    try:
        parsed = FallbacksConfig(on_error=chains).on_error
    except ValueError:
        return chains
    return FallbacksConfig(on_error=parsed).without(dropped).on_error


def _drop_from_verify(verify: dict, dropped: set[str], group: Any) -> dict | None:
    """Models left out for want of a key leave the verify settings too: with no verifier left the group
    serves unverified; without its escalation model it escalates to its costliest remaining one."""
    verify = dict(verify)
    verifiers = verify.get("verifiers")
    if isinstance(verifiers, list):
        kept = [v for v in verifiers if not (isinstance(v, str) and v in dropped)]
        if verifiers and not kept:
            log.info("route group %s: no verifier has its key set; it serves unverified", group)
            return None
        verify["verifiers"] = kept
        count = verify.get("count")
        if isinstance(count, int) and count > len(kept):
            verify["count"] = len(kept)
    escalate_to = verify.get("escalate_to")
    if isinstance(escalate_to, str) and escalate_to in dropped:
        log.info("route group %s: escalate_to %s skipped; escalating to the group's costliest model", group,
                 escalate_to)
        verify["escalate_to"] = None
    return verify
