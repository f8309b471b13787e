"""Video generation jobs (`/v1/videos`, gateway/videos.py): the job an upstream accepted, where it lives and
whose it is, so every replica reaches the same deployment for it, and what its budget hold was, so the
replica that first sees it end settles its bill."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, utc_now


class VideoJob(Base):
    __tablename__ = "video_jobs"
    __table_args__ = (Index("ix_video_jobs_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # the upstream's id, as it gave it
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    api_key_id: Mapped[str | None]  # whose it is (None: the master key, or no keys)
    team_id: Mapped[str | None]
    deployment: Mapped[str]  # the deployment's name (gateway/deployments.py): the one that holds the job
    model: Mapped[str]  # the model name the client asked for
    seconds: Mapped[int]
    size: Mapped[str]
    status: Mapped[str]  # queued, in_progress: not billed yet; completed, failed: billed (settled once)
    request_id: Mapped[str]  # the create's: its outcome row's id and its budget hold's
    hold_usd: Mapped[float]  # what the create held of its key's budget (0: no budget)
    hold_period: Mapped[int | None]  # the budget period the hold was taken in
    video: Mapped[Any]  # the Video object as the upstream last answered it
