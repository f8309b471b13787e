"""Hedged requests (Dean & Barroso, "The Tail at Scale"; gRPC's hedgingPolicy; Envoy's hedge policy): a
call to one deployment of a model that has no first byte (a stream's first chunk, a whole answer) after a
delay is sent to another deployment too; the first to answer wins and the others are cancelled (their
connections closed, which makes vLLM and Pitstop's engines abort them). The delay is a quantile of the
model's recent first-byte latencies; hedges are a bounded share of its requests (`hedging:`,
gateway/hedging_config.py). The dispatcher (gateway/dispatch.py) makes each call; this module decides."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter

from gateway.backends.base import BackendError
from gateway.deployments import Deployment
from gateway.health_checks import probed
from gateway.health_rescue import Outage, Rescues, deployment_down
from gateway.hedging_config import HedgingConfig

T = TypeVar("T")


class LatencyWindow:
    """The first-byte latencies of a model's last `size` successful calls."""

    def __init__(self, size: int) -> None:
        self.samples: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self.samples)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def quantile(self, q: float) -> float:
        """Nearest rank: a latency some call really had, never one between two modes of the tail."""
        assert self.samples, "no samples"
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class HedgeBudget:
    """A token bucket: each request of the model adds `share` of a token, each hedge takes one, and it
    holds at most `burst` (full at first). Counting requests rather than seconds keeps the bound a share
    of the model's traffic whatever its rate: a model having a bad minute is not sent twice its load."""

    def __init__(self, share: float, burst: int) -> None:
        self.share, self.burst = share, float(burst)
        self.tokens = self.burst

    def earn(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.share)

    def spend(self) -> bool:
        if self.tokens < 1.0 - 1e-9:  # ten requests' 0.1 make a token, though they sum to 0.999...
            return False
        self.tokens = max(0.0, self.tokens - 1.0)
        return True


class HedgePolicy:
    """Per model: its latency windows (streamed and whole apart, since a whole answer's first byte is
    its end), its hedge budget, and whether and after how long a request of it is hedged."""

    def __init__(self, config: HedgingConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.models = None if config.models is None else frozenset(config.models)
        self._windows: dict[tuple[str, bool], LatencyWindow] = {}
        self._budgets: dict[str, HedgeBudget] = {}
        # won / lost / failed / cancelled (the request ended otherwise, e.g. its client left) for each hedge
        # sent; budget / no_deployment for a hedge due but not sent.
        self.hedges = Counter("pitstop_hedges", "Hedged calls by outcome, and hedges due but not sent",
                              ["model", "outcome"], registry=registry)

    @classmethod
    def build(cls, config: HedgingConfig, registry: CollectorRegistry | None = None) -> HedgePolicy | None:
        return cls(config, registry) if config.enabled else None

    def covers(self, model: str) -> bool:
        return self.models is None or model in self.models

    def delay_s(self, model: str, streaming: bool, prefer: str | None, ready: int) -> float | None:
        """How long a request of `model` waits for its first byte before a hedge, or None: not hedged.
        Every request counts towards the model's budget, hedged or not."""
        if not self.covers(model):
            return None
        self._budget(model).earn()
        # A preferred deployment holds the request's KV (an agent session, a prefix): elsewhere it
        # would be prefilled again, costing more than the tail it might save.
        if prefer is not None or ready < 2:
            return None
        if self.config.delay_s is not None:
            return self.config.delay_s
        window = self._windows.get((model, streaming))
        if window is None or len(window) < self.config.min_samples:
            return None
        return max(self.config.min_delay_s, window.quantile(self.config.quantile))

    def observe(self, model: str, streaming: bool, seconds: float) -> None:
        if self.covers(model):
            key = (model, streaming)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = LatencyWindow(self.config.window)
            window.add(seconds)

    def spend(self, model: str) -> bool:
        return self._budget(model).spend()

    def count(self, model: str, outcome: str) -> None:
        self.hedges.labels(model, outcome).inc()

    def _budget(self, model: str) -> HedgeBudget:
        budget = self._budgets.get(model)
        if budget is None:
            budget = self._budgets[model] = HedgeBudget(self.config.max_extra_share, self.config.burst)
        return budget


# A call on a deployment up to its first byte: (deployment, attempt number, the error it retries after,
# the delay it was sent after when it is a hedge). It holds what it took (an admission slot) until it
# returns or raises, or, for an open stream, until its result is closed.
Start = Callable[[Deployment, int, BackendError | None, float | None], Awaitable[T]]


@dataclass
class _Call:
    deployment: Deployment
    number: int
    started: float
    hedge: bool
    rescue: bool = False  # sent because the probes took the deployment of the call before out
    outage: Outage | None = None  # done when its deployment is taken out, until that is dealt with
    outcome: str = "running"  # won, lost (another answered first), failed, cancelled


@dataclass
class Won(Generic[T]):
    result: T
    deployment: Deployment
    attempts: int  # 1 + the calls that failed first: a retry count, as without hedging
    hedge: dict[str, Any] | None  # the outcome row's extra.hedge, once a hedge was due
    rescue: dict[str, Any] | None = None  # the row's extra.rescue, once a call's deployment was taken out


class Race(Generic[T]):
    """One request's calls: the first; a retry when every call in flight has failed (retryable, at most
    `retries` failures in all); a hedge when the calls in flight have not answered `delay_s` after the
    last was sent. A failure while another call is in flight leaves that one running: it is the retry.
    With `rescues` (gateway/health_rescue.py), a call whose deployment its probes take out is sent to another
    too, once a request, unless another call in flight is on a deployment in routing; with no policy or
    no delay, no hedge. So a request makes at most `max_hedges` + 1 calls beyond its retries."""

    def __init__(self, policy: HedgePolicy | None, model: str, streaming: bool, delay_s: float | None, retries: int,
                 start: Start[T], drop: Callable[[T], Awaitable[None]],
                 next_deployment: Callable[[BackendError | None], Deployment],
                 hedge_deployment: Callable[[set[str]], Deployment | None],
                 clock: Callable[[], float] = time.monotonic, prompt_tokens: int = 0,
                 rescues: Rescues | None = None, fall_back: bool = False) -> None:
        self.policy, self.model, self.streaming = policy, model, streaming
        self.rescues = rescues
        self.fall_back = fall_back  # a rescue with no deployment left gives the call up for a fallback model
        self.rescue: dict[str, Any] | None = None  # the row's extra.rescue, once one was due
        self.prompt_tokens = prompt_tokens  # the prompt's estimate: what a cancelled call was billed at least
        self.delay_s, self.retries = delay_s, retries
        self.start, self.drop = start, drop  # drop: closes an answer that came second (an open stream)
        self.next_deployment = next_deployment  # a first call's or a retry's; raises when none is left
        self.hedge_deployment = hedge_deployment  # a ready one, least outstanding, not among those named
        self.clock = clock
        self.flying: dict[asyncio.Task[T], _Call] = {}
        self.calls: list[_Call] = []
        self.failures = 0
        self.hedge_due = False  # the delay passed on a call: the row says what came of it
        self.skipped: str | None = None  # why a hedge that was due was not sent

    async def run(self) -> Won[T]:
        error: BaseException | None = None
        try:
            won = await self._race()
        except BaseException as exc:
            error = exc
            raise
        finally:  # the winner's answer is in hand, the request failed, or its client left
            if self.flying:  # shielded: a second cancel must not leave a loser's slot held
                await asyncio.shield(self._cancel_the_rest())
            self._count()
            if isinstance(error, BackendError):  # the failed request's row says how its race went too
                error.hedge = self._report(None)
        won.hedge, won.rescue = self._report(won.deployment), self.rescue
        return won

    async def _race(self) -> Won[T]:
        last: BackendError | None = None
        hedge_at: float | None = None
        while True:
            if not self.flying:
                if self.failures > self.retries:
                    assert last is not None
                    raise last
                self._launch(self.next_deployment(last), last, hedge=False)
                hedge_at = self._next_hedge_at()
            timeout = None if hedge_at is None else max(0.0, hedge_at - self.clock())
            outages = {call.outage: call for call in self.flying.values() if call.outage is not None}
            done, _ = await asyncio.wait([*self.flying, *outages], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                hedge_at = self._hedge()
                continue
            if ended := [task for task in done if task in self.flying]:
                won, last = await self._settle(ended, last)
                if won is not None:
                    return won
            for outage in done & outages.keys():
                self._rescue(outages[outage])

    def _launch(self, deployment: Deployment, last: BackendError | None, hedge: bool, rescue: bool = False) -> None:
        outage = deployment.outage() if self.rescues is not None and probed(deployment) else None
        call = _Call(deployment, len(self.calls) + 1, self.clock(), hedge, rescue, outage)
        self.calls.append(call)
        task = asyncio.create_task(self.start(deployment, call.number, last, self.delay_s if hedge else None))
        self.flying[task] = call

    def _rescue(self, call: _Call) -> None:
        """`call`'s deployment was taken out: another call, where none was sent yet and none in flight is on a
        deployment in routing; with no deployment left, the fallback model where there is one, else wait."""
        call.outage = None
        assert self.rescues is not None
        if self.rescue is not None or call.outcome != "running" or any(
                not c.deployment.unhealthy for c in self.flying.values() if c is not call):
            return
        deployment = self.hedge_deployment({c.deployment.name for c in self.calls})
        self.rescue = {"from": call.deployment.name, "to": None if deployment is None else deployment.name}
        if deployment is not None:
            self._launch(deployment, None, hedge=False, rescue=True)
            return
        self.rescue["outcome"] = "fallback" if self.fall_back else "no_deployment"
        self.rescues.count(self.model, self.rescue["outcome"])
        if self.fall_back:
            raise deployment_down(call.deployment.name)

    def _next_hedge_at(self) -> float | None:
        if self.policy is None or self.delay_s is None:
            return None
        hedges = sum(call.hedge for call in self.calls)
        return self.clock() + self.delay_s if hedges < self.policy.config.max_hedges else None

    def _hedge(self) -> float | None:
        """The delay passed with no answer: another call, where a deployment and the budget allow."""
        self.hedge_due = True
        deployment = self.hedge_deployment({call.deployment.name for call in self.calls})
        assert self.policy is not None
        if deployment is None or not self.policy.spend(self.model):
            self.skipped = "no_deployment" if deployment is None else "budget"
            self.policy.count(self.model, self.skipped)
            return None  # no more for this request: the next would meet the same
        self._launch(deployment, None, hedge=True)
        return self._next_hedge_at()

    async def _settle(self, done: Iterable[asyncio.Task[T]],
                      last: BackendError | None) -> tuple[Won[T] | None, BackendError | None]:
        """The calls that ended: the first answer wins (another that came at once is closed); retryable
        failures are counted; any other error is the request's, unless something answered."""
        won: Won[T] | None = None
        fatal: BaseException | None = None
        for task in sorted(done, key=lambda t: self.flying[t].number):
            call = self.flying.pop(task)
            error = asyncio.CancelledError() if task.cancelled() else task.exception()
            if error is None and won is None:
                call.outcome = "won"
                if self.policy is not None:
                    self.policy.observe(self.model, self.streaming, self.clock() - call.started)
                won = Won(task.result(), call.deployment, self.failures + 1, None)
            elif error is None:
                call.outcome = "lost"
                await self.drop(task.result())
            else:
                call.outcome = "failed"
                if isinstance(error, BackendError) and error.retryable:
                    self.failures += 1
                    last = error
                elif fatal is None:
                    fatal = error
        if won is None and fatal is not None:
            raise fatal
        return won, last

    async def _cancel_the_rest(self) -> None:
        """Cancel the calls still in flight and wait for them: each releases its slot as it unwinds."""
        for task in self.flying:
            task.cancel()
        if self.flying:
            await asyncio.wait(self.flying)
        now = self.clock()
        for task, call in self.flying.items():
            call.outcome = "cancelled"
            # A lower bound on its latency, and past the delay as it should be.
            if self.policy is not None and self.delay_s is not None and now - call.started >= self.delay_s:
                self.policy.observe(self.model, self.streaming, now - call.started)
            if not task.cancelled() and task.exception() is None:  # it answered as it was cancelled
                await self.drop(task.result())
        self.flying.clear()

    def _count(self) -> None:
        answered = any(call.outcome == "won" for call in self.calls)
        for call in self.calls:
            outcome = "lost" if call.outcome == "cancelled" and answered else call.outcome
            if call.hedge and self.policy is not None:
                self.policy.count(self.model, outcome)
            if call.rescue and self.rescues is not None and self.rescue is not None:
                self.rescue["outcome"] = outcome
                self.rescues.count(self.model, outcome)

    def _report(self, winner: Deployment | None) -> dict[str, Any] | None:
        """The row's extra.hedge once a hedge was due; `winner` None: every call failed."""
        if not self.hedge_due:
            return None
        cancelled = [c for c in self.calls if c.outcome in ("cancelled", "lost")]
        assert self.delay_s is not None
        report: dict[str, Any] = {
            "delay_s": round(self.delay_s, 4), "asked": [c.deployment.name for c in self.calls],
            "hedges": sum(c.hedge for c in self.calls), "won": winner.name if winner is not None else None,
            "cancelled": [c.deployment.name for c in cancelled],
            "failed": [c.deployment.name for c in self.calls if c.outcome == "failed"]}
        if cancelled:
            # A provider bills a call it had begun (the prompt at least; a whole answer it finishes after
            # the client left): the prompt's estimate at each cancelled deployment's price, a lower bound,
            # added to the row's cost and the key's spend.
            report["cancelled_cost_usd"] = round(sum(c.deployment.cost_usd(self.prompt_tokens, 0)
                                                     for c in cancelled), 10)
        if self.skipped is not None:
            report["skipped"] = self.skipped
        return report
