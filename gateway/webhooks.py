"""Webhook events, sent as OpenAI sends them: when a background response or a batch ends (or a key's spend
crosses a share of its budget: gateway/budget_alerts.py), each endpoint that takes that event type
(`/v1/webhook_endpoints`, gateway/webhook_endpoints.py) is POSTed

    {"id": "evt_...", "object": "event", "created_at": 1764979200, "type": "response.completed",
     "data": {"id": "resp_..."}}

signed as Standard Webhooks sign (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
HMAC-SHA256 of "<id>.<timestamp>.<body>">`), so the openai SDK's `client.webhooks.unwrap(body, headers,
secret=...)` checks it. After a rotation that keeps the old secret, each delivery carries both signatures.

Nothing is lost: the event is queued in the transaction that ends the response or batch (storage/
webhooks.py), and any replica sends it. Delivery is at least once, as OpenAI's: an endpoint that does
not answer 2xx within `webhooks.timeout_s` gets it again later, with the same `webhook-id` (receivers
drop repeats by it), backing off up to `max_retry_s`, until `give_up_after_s`; a delivery given up is
logged and counted (`pitstop_webhook_deliveries_total{outcome="failed"}`). A replica that stops while
sending lets its deliveries go after `timeout_s` + `CLAIM_MARGIN_S`, for another to send."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from gateway.access_config import WebhooksConfig
from gateway.outbound_policy import OutboundPolicy, UrlRefused
from gateway.outbound_transport import guarded_httpx
from storage.inserts import describe
from storage.webhooks import Due, EventOutbox, WebhookStore, signing_secrets

log = logging.getLogger("pitstop.gateway")

CLAIM_MARGIN_S = 30.0  # a claim outlasts its send by this much
PUBLISH_TRIES, PUBLISH_WAIT_S = 30, 2.0  # an event of no store's change is queued for a minute while the database is away
PURGE_EVERY_S = 600.0
USER_AGENT = "Pitstop-Webhooks/1.0"


def new_secret() -> str:
    """A signing secret in Standard Webhooks' form: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<signature>` of the delivery, as the openai SDK checks it (a `whsec_` secret is base64)."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def event_body(event_id: str, event_type: str, created_at: int, object_id: str,
               data: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "created_at": created_at, "type": event_type,
                       "data": {"id": object_id} if data is None else data}, separators=(",", ":")).encode()


def delivery_body(due: Due) -> bytes:
    """What a delivery POSTs: the event; to a URL of the config's, its `data` as it is."""
    if due.raw:
        return json.dumps(due.data if due.data is not None else {"type": due.event_type, "id": due.object_id},
                          separators=(",", ":")).encode()
    return event_body(due.event_id, due.event_type, due.event_created_at, due.object_id, due.data)


def signed_headers(webhook_id: str, signing_secrets: tuple[str, ...], body: bytes) -> dict[str, str]:
    """Standard Webhooks' headers; with no secret (a URL of the config's), unsigned."""
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": webhook_id,
               "webhook-timestamp": str(timestamp)}
    if signing_secrets:
        headers["webhook-signature"] = " ".join(sign(s, webhook_id, timestamp, body) for s in signing_secrets)
    return headers


class WebhookSender:
    """Sends the outbox's due deliveries: looks every `poll_s`, and at once when this replica queued some."""

    def __init__(self, store: WebhookStore, outbox: EventOutbox, config: WebhooksConfig,
                 registry: CollectorRegistry, policy: Callable[[], OutboundPolicy] = OutboundPolicy) -> None:
        self.store, self.config = store, config
        self.policy = policy  # where endpoints may be (the config's `outbound:`, as reloaded)
        self.deliveries = Counter("pitstop_webhook_deliveries", "Webhook delivery attempts by outcome "
                                  "(delivered, retried, failed: given up)", ["event_type", "outcome"],
                                  registry=registry)
        outbox.wake = self._wake_from_thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._closing = False

    def _wake_from_thread(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._due.set)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False,
                                             transport=guarded_httpx(self.policy))
        return self._client

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhook sender")

    async def _run(self) -> None:
        purged_at, failing = 0.0, False
        while not self._closing:
            try:
                sent = await self.send_due()
                if time.monotonic() - purged_at > PURGE_EVERY_S:
                    purged_at = time.monotonic()
                    before = datetime.now(UTC) - timedelta(seconds=self.config.keep_s)
                    await asyncio.to_thread(self.store.purge, before)
                if failing:
                    log.warning("webhook deliveries are read again")
                    failing = False
            except Exception as exc:  # the database away: look again later (said once, not every look)
                if not failing:
                    log.warning("webhook deliveries not read: %s; looking again every %.1f s", describe(exc),
                                self.config.poll_s)
                failing, sent = True, 0
            if sent >= self.config.concurrency:
                continue  # a full batch: more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.config.poll_s)
            self._due.clear()

    async def send_due(self) -> int:
        """Claim and send the due deliveries (up to `concurrency`); how many there were."""
        token, now = uuid.uuid4().hex, datetime.now(UTC)
        until = now + timedelta(seconds=self.config.timeout_s + CLAIM_MARGIN_S)
        due = await asyncio.to_thread(self.store.claim, now, until, token, self.config.concurrency)
        await asyncio.gather(*(self._deliver(delivery, token) for delivery in due))
        return len(due)

    async def publish(self, event_type: str, object_id: str, data: dict[str, Any], urls: Sequence[str] = ()) -> bool:
        """Queue an event that no store's change carries (a budget crossed) in a transaction of its own,
        tried for a minute while the database is away; False (logged, counted failed) if it never took."""
        problem = ""
        for attempt in range(PUBLISH_TRIES):
            if attempt:
                await asyncio.sleep(PUBLISH_WAIT_S)
            try:
                await asyncio.to_thread(self.store.queue, event_type, object_id, data, urls)
            except Exception as exc:
                problem = describe(exc)
                continue
            self._due.set()
            return True
        self.deliveries.labels(event_type, "failed").inc()
        log.error("webhook event %s about %s not queued (the database is not answering: %s)", event_type,
                  object_id, problem)
        return False

    async def _deliver(self, due: Due, token: str) -> None:
        body = delivery_body(due)
        status, error = await self.post(due.url, due.id, due.secrets, body)
        now = datetime.now(UTC)
        try:
            if status is not None and 200 <= status < 300:
                await asyncio.to_thread(self.store.finish, due.id, token, True, now, status, None)
                self.deliveries.labels(due.event_type, "delivered").inc()
                return
            problem = error or f"HTTP {status}"
            age_s = now.timestamp() - due.event_created_at
            if age_s >= self.config.give_up_after_s:
                await asyncio.to_thread(self.store.finish, due.id, token, False, now, status, problem)
                self.deliveries.labels(due.event_type, "failed").inc()
                log.error("webhook %s (%s about %s) to %s given up after %d attempts over %.0f s: %s", due.id,
                          due.event_type, due.object_id, due.url, due.attempts + 1, age_s, problem)
                return
            wait_s = min(self.config.first_retry_s * 2 ** due.attempts, self.config.max_retry_s)
            await asyncio.to_thread(self.store.retry, due.id, token, now + timedelta(seconds=wait_s), status, problem)
            self.deliveries.labels(due.event_type, "retried").inc()
            log.info("webhook %s to %s failed (%s); again in %.0f s", due.id, due.url, problem, wait_s)
        except Exception as exc:  # not written: its claim lapses, and it is sent again (at least once)
            log.warning("webhook %s sent (%s) but not recorded: %s", due.id, status or error, describe(exc))

    async def post(self, url: str, webhook_id: str, signing_secrets: tuple[str, ...],
                   body: bytes) -> tuple[int | None, str | None]:
        """POST one signed delivery: its HTTP status, or None and what went wrong."""
        try:
            answer = await self._http().post(url, content=body, headers=signed_headers(webhook_id, signing_secrets,
                                                                                      body))
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        except UrlRefused as refused:  # the outbound policy: retried like any failure (a reload may allow it)
            return None, f"url_not_allowed: {refused}"
        return answer.status_code, None

    async def send_test(self, endpoint: dict[str, Any], event_type: str) -> tuple[int | None, str | None]:
        """A sample event of `event_type` to `endpoint`, now and once (the outbox is not involved)."""
        prefix = {"response": "resp", "batch": "batch"}.get(event_type.split(".")[0], "key")
        body = event_body(f"evt_test_{uuid.uuid4().hex}", event_type, int(time.time()), f"{prefix}_test")
        return await self.post(endpoint["url"], f"wh_test_{uuid.uuid4().hex}",
                               signing_secrets(endpoint, datetime.now(UTC)), body)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop looking; what is on its way gets `timeout_s` (one cut then is sent again, by any replica,
        once its claim lapses)."""
        self._closing = True
        self._due.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout_s)
        if self._client is not None:
            await self._client.aclose()
