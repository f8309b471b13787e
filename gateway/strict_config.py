"""The base of every section of the gateway's config file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """A section of the file that refuses keys it does not know: a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")
