"""The `guardrails:` section: checks on what the gateway sends to some models (gateway/guardrails.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.strict_config import StrictConfig

PIIKind = Literal["secret", "email", "credit_card", "ssn", "phone", "ip_address"]


class GuardrailConfig(StrictConfig):
    """One guardrail. `pii`: personal data and secrets (gateway/pii.py) masked with placeholders before
    the call and put back in the answer (`restore`), or the request refused (`action: block`).
    `blocklist`: the request refused when a message matches one of `patterns` (regular expressions).
    `models`: the models whose calls it checks (names, route groups, wildcard patterns); None: every model."""

    name: str = Field(min_length=1)
    kind: Literal["pii", "blocklist"]
    action: Literal["mask", "block"] | None = None  # None: mask for pii, block for a blocklist
    entities: list[PIIKind] | None = None  # pii: the kinds it looks for; None: all
    patterns: list[str] = Field(default_factory=list)  # blocklist
    restore: bool = True  # pii, mask: the values put back in the answer (litellm's output_parse_pii)
    models: list[str] | None = None

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _fits_its_kind(self) -> GuardrailConfig:
        if self.kind == "blocklist":
            if not self.patterns:
                raise ValueError("a blocklist needs patterns")
            if self.action == "mask" or self.entities is not None:
                raise ValueError("a blocklist blocks what matches its patterns: no action: mask, no entities")
            self.action = "block"
        else:
            if self.patterns:
                raise ValueError("patterns are for kind: blocklist; a pii guardrail takes entities")
            self.action = self.action or "mask"
        return self


def check_guardrails(guardrails: list[GuardrailConfig], groups: dict[str, list[str]],
                     serves: Callable[[str], bool]) -> None:
    """Names unique; each guardrail's `models` known (`serves`), a route group's standing for its models."""
    names = [g.name for g in guardrails]
    if len(names) != len(set(names)):
        raise ValueError("guardrails: names must be unique")
    for i, guard in enumerate(guardrails):
        for model in guard.models or ():
            if model in groups:  # a route group's guardrail checks the calls to each of its models
                guard.models = [*dict.fromkeys([*(guard.models or ()), *groups[model]])]
            elif not serves(model):
                raise ValueError(f"guardrails.{i}.models: '{model}' is neither a model, a route group nor a "
                                 "wildcard here")
