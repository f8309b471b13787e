"""`limits` and `alerts` read again on a reload (gateway/config_reload.py): the keys' and teams' default
limits (default_rpm, default_tpm, default_budget_usd, default_budget_period, team_defaults) and the budget
alerts' webhook_url and budget_thresholds. They are read where a request authenticates (gateway/auth.py
builds each caller's limits from the defaults and caches it ~10 s) and where a settled cost is checked
against the thresholds (gateway/budget_alerts.py), so the swap replaces both configs and drops the cached
callers: the next request of every key is admitted under the new defaults. A request already admitted keeps
the caller, and so the holds, it was admitted under. `limits.fail_open` is given to the limiter when it is
built (gateway/limits/factory.py), so a change to it still needs a restart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.state import GatewayState

LIMIT_SECTIONS = ("limits", "alerts")
RESTART_ONLY = {"limits": {"fail_open"}, "alerts": set()}


def changed_limits(old: Settings, new: Settings) -> list[str]:
    """The reloadable settings of `limits` and `alerts` that differ, as `section.setting`."""
    return [f"{section}.{name}" for section in LIMIT_SECTIONS
            for name in _differing(getattr(old, section).model_dump(), getattr(new, section).model_dump())
            if name not in RESTART_ONLY[section]]


def restart_only_limits(old: Settings, new: Settings) -> list[str]:
    """`limits.fail_open`, where it differs: the refusal names it."""
    return [f"{section}.{name}" for section in LIMIT_SECTIONS
            for name in _differing(getattr(old, section).model_dump(), getattr(new, section).model_dump())
            if name in RESTART_ONLY[section]]


def apply_limits(state: GatewayState, new: Settings) -> None:
    """Swaps the defaults and thresholds in (no await: within the model list's swap)."""
    state.auth.reconfigure(new.limits)
    if state.recorder.alerts is not None:
        state.recorder.alerts.config = new.alerts


def _differing(before: dict, after: dict) -> list[str]:
    return [name for name in before if before[name] != after.get(name)]
