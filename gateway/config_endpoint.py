"""How a reload of the model list is asked for (gateway/config_reload.py): `POST /config/reload` with the
master key, answering what changed (or a 400 saying why nothing did); SIGHUP to `pitstop serve`, logged
the same way; or `server.watch_config_s`, the file looked at and reloaded when it changes. One gateway
replica each: send the call or signal to every replica (each reads its own file), or let each watch it."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import suppress

from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.server.errors import APIError
from gateway.audit_endpoints import record_admin_event
from gateway.config_reload import ReloadRefused, ReloadReport
from gateway.key_admin import require_master
from gateway.state import GatewayState

log = logging.getLogger("pitstop.gateway")


async def reload_config(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.pitstop
    require_master(state, request, "reloading the config")
    answer = (await reload_and_count(state)).as_json()
    await record_admin_event(state, request, "config.reloaded", answer)
    return JSONResponse(answer)


async def reload_and_count(state: GatewayState) -> ReloadReport:
    """A reload, counted in `pitstop_config_reloads_total{outcome}`; a refusal is a 400 with its reason."""
    try:
        report = await state.reloader.reload(state)
    except ReloadRefused as exc:
        state.metrics.config_reloads.labels("refused").inc()
        log.warning("config not reloaded: %s", exc)
        raise APIError(400, f"config not reloaded, nothing changed: {exc}", code="config_reload_refused") from None
    except Exception as exc:  # a backend that would not start, say: nothing changed either
        state.metrics.config_reloads.labels("failed").inc()
        log.exception("config reload failed")
        raise APIError(502, f"config not reloaded, nothing changed: a new deployment failed to start ({exc})",
                       code="config_reload_failed") from None
    state.metrics.config_reloads.labels("reloaded").inc()
    return report


def watch_config(state: GatewayState) -> None:
    """`server.watch_config_s`: the file looked at that often and reloaded when it changes."""
    interval_s = state.settings.server.watch_config_s
    if interval_s is not None and state.reloader.path is not None:
        state.reloader.watch(interval_s, lambda: reload_and_count(state))


def reload_on_sighup(state: GatewayState) -> None:
    """SIGHUP reloads, as nginx and Envoy's hot restart have taught operators; only where signals reach the
    loop (the main thread: `pitstop serve`, not a test's server in a thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        with suppress(APIError):  # logged and counted
            await reload_and_count(state)

    def on_signal() -> None:
        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)
