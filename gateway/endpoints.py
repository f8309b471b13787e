"""The small endpoints: model list, health, readiness, metrics and feedback."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.server.errors import APIError, bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from engine.server.sse import SSEResponse
from gateway import messages_api
from gateway.outcomes import storable
from gateway.responses_api import item_page, request_id_of
from gateway.state import GatewayState
from gateway.token_count import count_input_tokens

_CREATED = int(time.time())


def _state(request: Request) -> GatewayState:
    return request.app.state.pitstop


def _window(state: GatewayState, models: list[str]) -> dict:
    """vLLM's `max_model_len`, where the context windows of `models` are known (a route group: its least)."""
    known = [state.windows.get(model) for model in models]
    return {"max_model_len": min(known)} if known and None not in known else {}  # type: ignore[type-var]


def _model_objects(state: GatewayState) -> list[dict]:
    """OpenAI's model objects: the route groups (with how they route), then the models; with vLLM's
    `max_model_len` where their context windows are known."""
    data = [{"id": name, "object": "model", "created": _CREATED, "owned_by": "pitstop", **_window(state, group.group.models),
             "pitstop": {"route_group": True, "models": group.group.models, "router": group.router.name,
                         "router_version": group.router.version, "cost_preference": group.cost_preference,
                         "exploration": {"epsilon": group.group.explore_epsilon, "among": group.group.explore_among},
                         "calibration": {**group.calibration.to_dict(), "since": group.since_calibration.to_dict()}
                         if group.calibration else None,
                         "verify": {**asdict(group.verify), "hold_chars": group.verify_hold_chars}
                         if group.verify else None}}
            for name, group in state.routes.groups.items()]
    wildcards = state.routes.wildcards
    return data + [{"id": name, "object": "model", "created": _CREATED, "owned_by": "pitstop", **_window(state, [name])}
                   for name in [*state.settings.model_names, *wildcards.adopted]] + [
        {"id": pattern.entry.model_name, "object": "model", "created": _CREATED, "owned_by": "pitstop",
         "pitstop": {"wildcard": True, "sent_as": pattern.entry.litellm_params.model}} for pattern in wildcards.patterns]


async def list_models(request: Request) -> Response:
    """The models and route groups the caller's key may use (as OpenAI's: where keys are required, a key)."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    return JSONResponse({"object": "list", "data": [m for m in _model_objects(state) if caller.may_use(m["id"])]})


async def retrieve_model(request: Request) -> Response:
    """GET /v1/models/{model} (the SDKs' `models.retrieve`); a name may hold slashes."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    name = request.path_params["model"]
    if caller.may_use(name):
        state.routes.adopt(name)  # a name a wildcard matches is a model (a client checks before it calls)
    for model in _model_objects(state):
        if model["id"] == name and caller.may_use(name):
            return JSONResponse(model)
    available = ", ".join(n for n in state.routes.names if caller.may_use(n))
    raise not_found(f"the model {name!r} does not exist; available: {available}", "model", "model_not_found")


async def retrieve_response(request: Request) -> Response:
    """GET /v1/responses/{id}: a stored Response, as its client got it (gateway/stored_responses.py)."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    response_id = request.path_params["response_id"]
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):  # a background run's, resumed
        after = request.query_params.get("starting_after", "-1")
        if not after.lstrip("-").isdigit():
            raise bad_request("'starting_after' must be an event's sequence number", "starting_after", "invalid_type")
        return SSEResponse(await state.responses.follow(response_id, caller.key_id, int(after)))
    return SafeJSONResponse(await state.responses.find(response_id, caller.key_id))


async def delete_response(request: Request) -> Response:
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    response_id = request.path_params["response_id"]
    await state.responses.delete(response_id, caller.key_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(request: Request) -> Response:
    """POST /v1/responses/{id}/cancel: a background response, stopped (gateway/background.py)."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    return SafeJSONResponse(await state.responses.cancel(request.path_params["response_id"], caller.key_id))


async def response_input_items(request: Request) -> Response:
    """GET /v1/responses/{id}/input_items: the response's own input items, a page at a time (`limit`,
    `order`, `after`) as the SDKs' cursor pages read them."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    items = await state.responses.items(request.path_params["response_id"], caller.key_id)
    return SafeJSONResponse(item_page(items, request.query_params))


async def count_response_tokens(request: Request) -> Response:
    """POST /v1/responses/input_tokens (OpenAI's): the request's prompt tokens, after the chain or
    conversation it continues (gateway/token_count.py: counted where its model's deployment can, else
    estimated)."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    raw = await read_json(request, state.settings.server.max_body_bytes)
    if isinstance(raw, dict) and isinstance(raw.get("model"), str):
        caller.check_model(raw["model"])
    chat = await state.responses.input_chat(raw, caller.key_id)
    counted = await count_input_tokens(state, chat, request.headers)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": counted.tokens}, headers=counted.headers)


async def count_message_tokens(request: Request) -> Response:
    """POST /v1/messages/count_tokens (Anthropic's): as input_tokens, errors in Anthropic's shape."""
    state = _state(request)
    try:
        caller = await state.auth.authenticate(request.headers)
        raw = await read_json(request, state.settings.server.max_body_bytes)
        if isinstance(raw, dict) and isinstance(raw.get("model"), str):
            caller.check_model(raw["model"])
        counted = await count_input_tokens(state, messages_api.count_chat(raw), request.headers)
        return JSONResponse({"input_tokens": counted.tokens}, headers=counted.headers)
    except APIError as error:
        return messages_api.error_response(error)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when every model has a healthy deployment; with how each table's writer stands (rows waiting
    for the database pile up there during an outage)."""
    state = _state(request)
    down = await _deployments_down(state)
    models = {name: any(d.name not in down for d in deployments) for name, deployments in state.pool.by_model.items()}
    writers = {table: writer.stats() for table, writer in state.writers().items()}
    ready = all(models.values())
    # A model held while its engines are paused or asleep (gateway/model_holds.py) is ready: they will serve.
    body = {"ready": ready, "models": models, "deployments_down": sorted(down), "held_models": state.dispatcher.holds.held,
            "writers": {table: {"written": stats.written, "buffered": stats.buffered,
                                "spool_pending": stats.spool_pending, "dropped": stats.dropped,
                                "last_error": stats.last_error} for table, stats in writers.items()},
            "outcome_log": {"written": writers["outcomes"].written, "buffered": writers["outcomes"].buffered,
                            "spooled": writers["outcomes"].spooled, "last_error": writers["outcomes"].last_error}}
    return JSONResponse(body, status_code=200 if ready else 503)


async def _deployments_down(state: GatewayState) -> set[str]:
    """With health checks (gateway/health_checks.py), those their last probes took out: nothing is asked
    again, so a readiness probe never waits on a hung deployment. Without, each deployment asked now, all
    at once."""
    deployments = state.pool.deployments
    if state.health_checker is not None:
        return {d.name for d in deployments if d.unhealthy}
    answers = await asyncio.gather(*(d.backend.healthy() for d in deployments))
    return {d.name for d, healthy in zip(deployments, answers, strict=True) if not healthy}


async def metrics(request: Request) -> Response:
    state = _state(request)
    for table, writer in state.writers().items():
        stats = writer.stats()
        for name in ("written", "buffered", "spooled", "spool_pending", "rejected", "dropped"):
            state.metrics.writer_rows.labels(table, name).set(getattr(stats, name))
            if table == "outcomes" and name in ("written", "buffered", "spooled", "dropped"):
                state.metrics.outcome_rows.labels(name).set(getattr(stats, name))
    state.metrics.background_runs.set(len(state.responses.background.runs))
    for deployment in state.pool.deployments:
        state.metrics.outstanding.labels(deployment.name).set(deployment.outstanding)
        if deployment.admission is not None:
            state.metrics.admission_waiting.labels(deployment.name).set(deployment.admission.waiting)
        if deployment.window is not None:
            requests, tokens = deployment.window.usage()
            state.metrics.deployment_window.labels(deployment.name, "rpm").set(requests)
            state.metrics.deployment_window.labels(deployment.name, "tpm").set(tokens)
    holds = state.dispatcher.holds  # models paused or asleep through the gateway (gateway/model_holds.py)
    state.metrics.model_held.clear()  # a model released since the last scrape leaves the gauge
    for model, reason in holds.held.items():
        state.metrics.model_held.labels(model, reason).set(1)
    for model, waiting in holds.waiting.items():
        state.metrics.held_requests.labels(model).set(waiting)
    for (name, measure), ewma in list(state.pool.balancer.latencies.items()):  # `server.routing_strategy: latency`
        if ewma.value is not None:
            state.metrics.deployment_latency.labels(name, measure).set(ewma.value)
    if state.sessions is not None:
        state.sessions.collect()
    for name, group in state.routes.groups.items():
        state.metrics.cost_preference.labels(name).set(group.cost_preference)
        since = group.since_calibration
        if group.calibration is not None and since.requests:
            state.metrics.calibration_achieved.labels(name, "since").set(since.total / since.requests)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def feedback(request: Request) -> Response:
    """`{"request_id" | "session_id", "metric": "quality", "value": number}` -> stored for training,
    with the caller's key: a session's feedback counts for that key's requests (storage/export.py)."""
    state = _state(request)
    caller = await state.auth.authenticate(request.headers)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = set(body) - {"request_id", "session_id", "metric", "value", "extra"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0], "unknown_field")
    request_id, session_id = body.get("request_id"), body.get("session_id")
    if isinstance(request_id, str):
        request_id = request_id_of(request_id)  # a Response's id (resp_...) names its request
    if not (isinstance(request_id, str) and request_id) and not (isinstance(session_id, str) and session_id):
        raise bad_request("give a 'request_id' or a 'session_id' (strings)", "request_id")
    metric = body.get("metric", "quality")
    value = body.get("value")
    if not isinstance(metric, str) or not 0 < len(metric) <= 64:
        raise bad_request("'metric' must be a string of 1 to 64 characters", "metric")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        raise bad_request("'value' must be a finite number", "value")
    extra = body.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise bad_request("'extra' must be an object", "extra")
    try:
        state.feedback.submit(storable({"request_id": request_id, "session_id": session_id, "metric": metric,
                                        "value": float(value), "extra": extra, "api_key_id": caller.key_id}))
    except (ValueError, RuntimeError) as exc:
        raise APIError(503, f"feedback not accepted: {exc}") from None
    return JSONResponse({"accepted": True}, status_code=202)
