"""A route group's recent traffic from the outcome log: what its cost preference is calibrated on
(routers/calibration.py, gateway/route_calibration.py). Prompts are stored only with
`storage.store_text`; rows without one are skipped (and do not count toward the window)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from storage.export import prompt_text
from storage.models import Outcome


@dataclass(frozen=True)
class LoggedRequest:
    prompt: str  # the text routers read: the last user turn
    model: str | None = None  # the model that served it (a model_name of the group)
    cost_usd: float | None = None  # what it really cost: with a group's `verify:`, every call made
    routed_model: str | None = None  # the router's pick, where verification served another model
    verify_outcome: str | None = None  # gateway/verify.py's outcome, where the group verifies

    @property
    def pick(self) -> str | None:
        """The model the router chose for it."""
        return self.routed_model or self.model


def recent_requests(engine: Engine, route_group: str, limit: int) -> list[LoggedRequest]:
    """The group's last `limit` served requests whose model its router chose, oldest first. A
    session's later turns stay on the session's model whatever the preference (their rows name no
    router), so they are not what a preference governs."""
    outcomes = Outcome.__table__
    query = (select(outcomes.c.prompt, outcomes.c.model, outcomes.c.cost_usd, outcomes.c.routed_model,
                    outcomes.c.verify_outcome)
             .where(outcomes.c.route_group == route_group, outcomes.c.status == "ok", outcomes.c.prompt.is_not(None),
                    outcomes.c.router_name.is_not(None))
             .order_by(outcomes.c.created_at.desc(), outcomes.c.request_id.desc())
             .limit(limit))
    with engine.connect() as connection:
        stored = connection.execute(query).all()
    logged = [LoggedRequest(prompt_text(prompt) or "", model, cost, routed, outcome)
              for prompt, model, cost, routed, outcome in reversed(stored)]
    return [r for r in logged if r.prompt]
