"""Rank each request by its expected work on the model the router chose (rankers/).

The ranker predicts the answer's length; with the artifact's work table (rankers/work.py, `ranking.by_work`,
on by default) the score sent on is that of the whole prompt plus the predicted answer, so a long
conversation or few-shot prompt is not served first for a short answer.

Loaded once at start from the configured artifact (default: the committed one), and warmed there so
the first request does not build the encoder's scorer (its ONNX graph comes from rankers/onnx_cache.py's
cache after a first start); a missing or broken artifact is logged and
ranking is off, never a crash. The score
goes to `CallContext.hints.rank_score` (Pitstop engines and the admission queue order by it) and to
the outcome row. Scoring runs in a worker thread (`ranking.offload`, on by default: ONNX Runtime
releases the GIL, so the encoder runs beside the event loop; bench/ranking_offload.py measures both
ways), in the ranker's own pool (`ranking.threads`), so a backlog of ranks never delays what runs in
asyncio's default pool (API-key lookups, spend updates). Where no deployment of the chosen model orders by the rank (no admission queue, neither a
Pitstop engine nor vLLM: an API provider), the rank is only logged, so the request does not wait for
it: it is scored beside the upstream call and the outcome row waits for it instead
(gateway/outcomes.py). With `offload: false` every request is scored on the loop before its call.
A deployment is ranked as the model its
`model_info.router_model` names (the training data's name), else as its model_name; a model the
ranker never saw is ranked by the prompt alone.

vLLM orders waiting requests by (priority, arrival) with an integer priority and no aging. Sent as
`priority`, the aged key itself (wall-clock deciseconds + horizon x score) keeps both the
shortest-first order and the starvation bound of engine/rank_policy.py on a vLLM server. A request
with a client-given priority keeps sending that priority unchanged (the existing contract); it then
goes ahead of every ranked request on that server, whose keys are large numbers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from engine.rank_policy import UNRANKED_SCORE
from gateway.backends.base import CallContext
from rankers.config import RankingConfig
from rankers.names import canonical_model
from rankers.work import PREFILL_WEIGHT

if TYPE_CHECKING:  # the request path imports the model code only when a ranker is loaded
    from gateway.outcomes import OutcomeDraft
    from rankers.base import Ranker

log = logging.getLogger("pitstop.ranking")
PRIORITY_TICKS_PER_S = 10
PRIORITY_CLASS = 10**12  # one explicit-priority step outweighs any aged key (~1.8e10 ticks today)
MAX_PRIORITY_CLASS = 9_000_000  # 9e6 classes x 1e12 stays under 2**63
# The last artifact loaded, by (path, inode, mtime, size): gateways built in one process (tests, replicas of an
# app) share it rather than each loading the encoder again. Scoring only reads it.
_LOADED: dict[tuple[str, int, int, int], Ranker] = {}


class RankScores(NamedTuple):
    sent: float  # to the scheduler and the row's `rank_score`: the work score, or the answer score
    # The ranker's own answer-length score, where the work score is sent: the row keeps it as
    # `extra.rank_answer_score`, so logged ranks can still be judged against answer lengths.
    answer: float | None = None

    def record(self, extra: dict) -> None:
        extra["rank_score"] = self.sent
        if self.answer is not None:
            extra["rank_answer_score"] = self.answer


class RequestRanker:
    def __init__(self, ranker: Ranker | None, ranker_model: dict[str, str], offload: bool = True,
                 threads: int | None = None, by_work: bool = True, prefill_weight: float = PREFILL_WEIGHT) -> None:
        self.ranker = ranker
        # Score by expected work, prompt plus answer (rankers/work.py), where the artifact has the table.
        table = getattr(ranker, "work_table", None) if by_work else None
        self.work_table = None if table is None else table.with_weight(prefill_weight)
        self.ranker_model = ranker_model  # deployment model_name -> the name the ranker knows
        self.offload = offload
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        # Each score's CPU time (the thread's, so waits for the GIL or a core do not count): the
        # gateway's `pitstop_rank_cpu_seconds`, the ranker's cost on the machine it runs on.
        self.observe_cpu: Callable[[float], None] | None = None

    @classmethod
    def load(cls, config: RankingConfig, ranker_model: dict[str, str], base_dir: Path = Path(".")
             ) -> RequestRanker:
        if not config.enabled:
            return cls(None, ranker_model)
        from rankers.artifact import DEFAULT_ARTIFACT, load_ranker  # noqa: PLC0415

        path = DEFAULT_ARTIFACT if config.artifact is None else base_dir / config.artifact
        try:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
            ranker = _LOADED.get(key)
            if ranker is None:
                started = time.perf_counter()
                ranker = load_ranker(path)
                ranker.score("warm up", "")  # builds the encoder's scorer now, not on the first request
                log.info("ranker %s v%s loaded from %s in %.1f s", ranker.family, ranker.version, path,
                         time.perf_counter() - started)
                _LOADED.clear()  # one artifact at a time: a reload replaces it
                _LOADED[key] = ranker
        except (OSError, ValueError, EOFError, ImportError, AttributeError) as error:
            log.warning("ranker artifact %s not loaded (%s): requests go unranked", path, error)
            return cls(None, ranker_model)
        if config.by_work and getattr(ranker, "work_table", None) is None:
            log.warning("ranker artifact %s has no work table: ranking by answer length alone "
                        "(`pitstop train ranker --add-work-table %s` adds it)", path, path)
        return cls(ranker, ranker_model, config.offload, config.threads, config.by_work, config.prefill_weight)

    def scores(self, prompt: str, model_name: str, prompt_chars: int | None = None,
               cached_tokens: int = 0) -> RankScores | None:
        """The rank score sent on and the ranker's own answer score. With a work table the score sent
        is of prompt (`prompt_chars`, default the text's; less the `cached_tokens` the engine already
        holds) plus answer."""
        if self.ranker is None or not prompt:
            return None
        model = canonical_model(self.ranker_model.get(model_name, model_name))
        started = time.thread_time()
        try:
            answer = self.ranker.score(prompt, model)
            if self.work_table is None:
                return RankScores(round(answer, 6))
            work = self.work_table.score(answer, model, len(prompt) if prompt_chars is None else prompt_chars,
                                         cached_tokens)
            return RankScores(round(work, 6), round(answer, 6))
        except Exception:  # a ranking hiccup must not fail the request: it goes unranked
            log.exception("ranking failed for model %s", model_name)
            return None
        finally:
            if self.observe_cpu is not None:
                self.observe_cpu(time.thread_time() - started)

    def score(self, prompt: str, model_name: str, prompt_chars: int | None = None,
              cached_tokens: int = 0) -> float | None:
        """The score sent on (`scores`)."""
        scores = self.scores(prompt, model_name, prompt_chars, cached_tokens)
        return None if scores is None else scores.sent

    async def apply(self, prompt: str, model_name: str, ctx: CallContext, draft: OutcomeDraft,
                    needed: bool = True, prompt_chars: int | None = None, cached_tokens: int = 0) -> CallContext:
        """The request's context with its rank, or, where the deployment does not use it (`needed`
        false) and scoring is offloaded, unchanged at once while the rank is scored for the row.
        `cached_tokens`: the part of the prompt an agent session's pin holds on the instance the
        request goes to (gateway/sessions.py); its prefill is skipped, so it is not counted as work.
        A request the ranker cannot score (no text: token ids, no user turn; or a failure) goes to a
        deployment that orders by rank as the median, as Pitstop's engines take an unranked one: sent
        without a rank, vLLM would read priority 0 and serve it before every ranked request."""
        if self.ranker is None:
            return ctx
        if not prompt:
            return _median(ctx) if needed else ctx
        if cached_tokens and self.work_table is not None:
            draft.extra["rank_cached_tokens"] = cached_tokens
        if not needed and self.offload:
            draft.rank_pending = self._in_pool(prompt, model_name, prompt_chars, cached_tokens)
            return ctx
        if self.offload:  # ONNX Runtime (and torch) release the GIL in their kernels
            scores = await self._in_pool(prompt, model_name, prompt_chars, cached_tokens)
        else:
            scores = self.scores(prompt, model_name, prompt_chars, cached_tokens)
        if scores is None:
            return _median(ctx) if needed else ctx
        scores.record(draft.extra)
        return replace(ctx, hints=replace(ctx.hints, rank_score=scores.sent))


    def _in_pool(self, prompt: str, model_name: str, prompt_chars: int | None, cached_tokens: int
                 ) -> asyncio.Future[RankScores | None]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pitstop-rank")
        return asyncio.get_running_loop().run_in_executor(self._pool, self.scores, prompt, model_name, prompt_chars,
                                                          cached_tokens)

    def close(self) -> None:
        """After the outcome rows have drained: nothing waits for a rank any more."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _median(ctx: CallContext) -> CallContext:
    return replace(ctx, hints=replace(ctx.hints, rank_score=UNRANKED_SCORE))


def vllm_priority(ctx: CallContext, horizon_s: float, now: float | None = None) -> int:
    """The aged rank key as vLLM's integer priority (lower first), within the request's priority class
    (its priority, whole, clamped so that the sum fits vLLM's 64-bit integer)."""
    now = time.time() if now is None else now
    score = UNRANKED_SCORE if ctx.hints.rank_score is None else min(max(ctx.hints.rank_score, 0.0), 1.0)
    aged = round((now + horizon_s * score) * PRIORITY_TICKS_PER_S)
    return min(max(int(ctx.priority), -MAX_PRIORITY_CLASS), MAX_PRIORITY_CLASS) * PRIORITY_CLASS + aged
