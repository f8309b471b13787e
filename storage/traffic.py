"""A route group's recent traffic from the outcome log: what its cost preference is calibrated on
(routers/calibration.py, gateway/route_calibration.py). Prompts are stored only with
`storage.store_text`; rows without one are skipped (and do not count toward the window)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine

from storage.export import prompt_text
from storage.models import Outcome


def recent_prompts(engine: Engine, route_group: str, limit: int) -> list[str]:
    """The texts routers read (the last user turn) of the group's last `limit` served requests whose
    model its router chose, oldest first. A session's later turns stay on the session's model whatever
    the preference (their rows name no router), so they are not what a preference governs."""
    outcomes = Outcome.__table__
    query = (select(outcomes.c.prompt)
             .where(outcomes.c.route_group == route_group, outcomes.c.status == "ok", outcomes.c.prompt.is_not(None),
                    outcomes.c.router_name.is_not(None))
             .order_by(outcomes.c.created_at.desc(), outcomes.c.request_id.desc())
             .limit(limit))
    with engine.connect() as connection:
        stored = connection.execute(query).scalars().all()
    texts = [prompt_text(p) for p in reversed(stored)]
    return [t for t in texts if t]
