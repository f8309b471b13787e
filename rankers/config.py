"""The gateway's `ranking:` section (validated with the rest of the config file)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.rank_policy import DEFAULT_HORIZON_S
from rankers.work import PREFILL_WEIGHT


class RankingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Ranker artifact; default: the committed rankers/artifacts/default.joblib (`listmle-blend`; the cheaper
    # committed `pitstop` ranker is rankers/artifacts/pitstop.joblib). A missing or bad file
    # is logged and requests go unranked (they then count as the median in every queue).
    artifact: str | None = None
    # Order of each deployment's admission queue (model_info.max_concurrency): an engine policy name.
    admission_policy: str = "program-rank"
    # Aging for vLLM's integer `priority` (see gateway/ranking.py); the engines' own policy has its own.
    horizon_s: float = Field(default=DEFAULT_HORIZON_S, ge=0)
    # Score in a worker thread rather than on the event loop. On: ONNX Runtime releases the GIL, so the
    # default encoder ranker no longer stalls the loop; at 100 req/s on 2 cores it cut the gateway's p99
    # from 70.6 to 40.2 ms, and the cheap ranker moved by under 1 ms either way (bench/ranking_offload.py).
    # Also lets a request to a deployment that does not order by the rank (an API provider) go out while
    # its rank is scored for the outcome row. Off: every request is scored on the loop before its call.
    offload: bool = True
    # Threads that score offloaded requests: their own pool, so a backlog of ranks never delays the
    # default pool's work (API-key lookups, spend updates). Default: the number of cores, at most 4.
    threads: int | None = Field(default=None, ge=1)
    # Rank by expected work, the whole prompt plus the predicted answer (rankers/work.py), rather than by
    # answer length alone: a long prompt costs the engine prefill. Needs the artifact's work table.
    by_work: bool = True
    # What a prompt token counts against an answer token in that work: 1.0 for LLMs served on GPUs (chosen
    # on the simulated H100, bench/scheduling_prefill_weight.py); lower where prefill is cheap next to
    # decoding (Pitstop's CPU torch runner: 0.02 in the same benchmark).
    prefill_weight: float = Field(default=PREFILL_WEIGHT, ge=0)

    @field_validator("admission_policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        from engine.policy import POLICIES  # noqa: PLC0415

        if name not in POLICIES:
            raise ValueError(f"unknown scheduling policy {name!r}; known: {sorted(POLICIES)}")
        return name
