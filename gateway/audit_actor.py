"""Who made an admin change, as OpenAI's audit log names an actor: the master key over HTTP (an admin API
key of a service account, with the address it called from), or a person at the CLI (a session)."""

from __future__ import annotations

import getpass

from starlette.requests import Request

from storage.audit import Actor

MASTER_ACTOR_ID = "master_key"  # the config's auth.master_key, named without its secret


def admin_actor(request: Request) -> Actor:
    """The master key as OpenAI's actor (an admin API key of a service account), with where it called from."""
    return {"type": "api_key", "api_key": {
        "id": MASTER_ACTOR_ID, "type": "service_account", "service_account": {"id": MASTER_ACTOR_ID},
        "ip_address": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent")}}


def cli_actor() -> Actor:
    """Whoever ran `pitstop keys|teams ...` on the gateway's database, as OpenAI's session actor."""
    return {"type": "session", "session": {"user": {"id": f"cli:{getpass.getuser()}", "email": None},
                                           "ip_address": None, "user_agent": "pitstop-cli"}}
