"""Where a realtime session goes: a deployment of its model that speaks OpenAI's Realtime API (`openai/` and
`azure/` models marked `model_info.mode: realtime`, or whose name says realtime), chosen as the dispatcher
chooses (gateway/deployments.py: least outstanding, cooling and unhealthy ones passed over), with the
model's `fallbacks.on_error` chain after it; and the upstream WebSocket, opened with the `websockets`
package through `outbound.proxy` where one is set (engine/net_proxy.py).

    openai/<m>   {api_base or https://api.openai.com/v1}/realtime?model=<m>     Authorization: Bearer <api_key>
    azure/<d>    {api_base}/openai/realtime?api-version=<v>&deployment=<d>      api-key: <api_key>

http(s) bases become ws(s). A deployment that cannot be reached is marked failed (its cooldown as any call's)
and the next is tried, `server.num_retries` more at most; where none connects the client is told 502."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import Headers
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from engine.net_proxy import proxy_for
from engine.server.errors import APIError, bad_request, not_found
from gateway.deployment_build import entry_key
from gateway.deployments import Deployment
from gateway.model_list_config import ModelEntry
from gateway.state import GatewayState

log = logging.getLogger("pitstop.realtime")
REALTIME_PROVIDERS = ("openai", "azure")
OPENAI_BASE = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-01-preview"  # litellm's default for Azure realtime
MAX_FRAME_BYTES = 16 * 2**20  # a frame larger than this from upstream closes the session (1009)
RECEIVE_QUEUE = 16  # frames read from upstream ahead of the client: the relay's bounded buffer
# Headers of the client's handshake passed on (OpenAI's beta opt-in); its key never is.
PASSED_HEADERS = ("openai-beta",)


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]


@dataclass
class Upstream:
    connection: ClientConnection
    deployment: Deployment
    model: str  # the model_name served (a fallback's, where the asked model's deployments failed)
    url: str


def _ws(base: str) -> str:
    scheme, sep, rest = base.partition("://")
    return {"http": "ws", "https": "wss"}.get(scheme, scheme) + sep + rest if sep else base


def target_of(entry: ModelEntry) -> Target:
    """The upstream URL and auth headers of a realtime entry (module docstring)."""
    params = entry.litellm_params
    extra = params.model_extra or {}
    upstream_model = params.model.split("/", 1)[1]
    if params.provider == "azure":
        if params.api_base is None:
            raise APIError(500, f"{entry.model_name}: an azure/ realtime model needs litellm_params.api_base")
        version = extra.get("api_version") or os.environ.get("AZURE_API_VERSION") or AZURE_API_VERSION
        query = urlencode({"api-version": version, "deployment": upstream_model})
        key = params.api_key or os.environ.get("AZURE_API_KEY") or ""
        return Target(f"{_ws(params.api_base.rstrip('/'))}/openai/realtime?{query}", {"api-key": key})
    key = params.api_key or os.environ.get("OPENAI_API_KEY") or ""
    base = _ws((params.api_base or OPENAI_BASE).rstrip("/"))
    return Target(f"{base}/realtime?{urlencode({'model': upstream_model})}", {"authorization": f"Bearer {key}"})


def is_realtime(entry: ModelEntry) -> bool:
    provider = entry.litellm_params.provider
    return provider in REALTIME_PROVIDERS and (
        entry.model_info.mode == "realtime" or "realtime" in entry.litellm_params.model.lower())


def _entries(state: GatewayState) -> dict[str, ModelEntry]:
    """The config's entries by what their deployments were built from (Deployment.entry_key)."""
    settings = state.settings
    return {entry_key(entry, settings): entry for entry in settings.model_list}


def check_realtime_model(state: GatewayState, model: str) -> None:
    """A 404 for a name the gateway does not serve, a 400 for a route group or a model with no realtime
    deployment: before the WebSocket is accepted."""
    routes = state.routes
    entries = _entries(state)
    served = sorted({e.model_name for e in entries.values() if is_realtime(e)})
    named = ", ".join(served) or "none is configured"
    if model in routes.groups:
        raise bad_request(f"{model!r} is a route group, which routes chats; connect /v1/realtime to a realtime model "
                          f"by name (models that serve it: {named})", "model", "model_not_supported")
    if not routes.adopt(model):
        raise not_found(f"the model {model!r} does not exist; models that serve /v1/realtime: {named}", "model",
                        "model_not_found")
    if not _realtime_deployments(state, model, entries):
        raise bad_request(f"the model {model!r} has no realtime deployment (an openai/ or azure/ model marked "
                          f"model_info.mode: realtime); models that serve /v1/realtime: {named}", "model",
                          "model_not_supported")


def _realtime_deployments(state: GatewayState, model: str, entries: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
    """The model's deployments that speak the Realtime API, by deployment name, with their entries."""
    found = {}
    for deployment in state.pool.by_model.get(model, ()):
        entry = entries.get(deployment.entry_key)
        if entry is not None and is_realtime(entry):
            found[deployment.name] = entry
    return found


def chain(state: GatewayState, model: str) -> list[str]:
    """The model, then its `fallbacks.on_error` models that serve realtime too."""
    fallbacks = state.settings.fallbacks
    later = fallbacks.on_error.get(model, [])[: fallbacks.max_models]
    return [model, *(m for m in later if m != model)]


async def open_upstream(state: GatewayState, model: str, client_headers: Headers) -> Upstream:
    """A connected upstream for `model` (module docstring); a 502 where no deployment of the chain connects."""
    entries = _entries(state)
    attempts = state.settings.server.num_retries + 1
    failures: list[str] = []
    for name in chain(state, model):
        realtime = _realtime_deployments(state, name, entries)
        tried: set[str] = set(d.name for d in state.pool.by_model.get(name, ()) if d.name not in realtime)
        for _ in range(attempts):
            deployment = state.pool.pick(name, exclude=tried)
            if deployment is None:
                break
            tried.add(deployment.name)
            target = target_of(realtime[deployment.name])
            try:
                connection = await _connect(state, target, client_headers)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                state.pool.mark_failure(deployment)
                failures.append(f"{deployment.name}: {_described(exc)}")
                log.warning("realtime upstream %s did not connect: %s", deployment.name, _described(exc))
                continue
            state.pool.mark_success(deployment)
            return Upstream(connection, deployment, name, target.url)
    raise APIError(502, f"no realtime deployment of {model!r} could be reached ({'; '.join(failures) or 'none'})",
                   code="upstream_unavailable")


def _described(exc: Exception) -> str:
    if isinstance(exc, InvalidStatus):
        return f"the upstream answered HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


async def _connect(state: GatewayState, target: Target, client_headers: Headers) -> ClientConnection:
    parts = urlsplit(target.url)
    scheme = "https" if parts.scheme == "wss" else "http"
    proxy = proxy_for(state.settings.outbound.proxy, scheme, parts.hostname or "")
    headers = {**{name: client_headers[name] for name in PASSED_HEADERS if name in client_headers}, **target.headers}
    return await connect(target.url, additional_headers=headers, proxy=proxy, compression=None,
                         open_timeout=state.settings.server.connect_timeout_s, max_size=MAX_FRAME_BYTES,
                         max_queue=RECEIVE_QUEUE)
