"""The `guardrails:` section: checks on what the gateway sends to some models (gateway/guardrails.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.strict_config import StrictConfig

PIIKind = Literal["secret", "email", "credit_card", "ssn", "phone", "ip_address"]
# OpenAI's moderation categories (omni-moderation-latest's, and text-moderation's before it).
Category = Literal["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
                   "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
                   "violence/graphic"]


class GuardrailConfig(StrictConfig):
    """One guardrail. `pii`: personal data and secrets (gateway/pii.py) masked with placeholders before
    the call and put back in the answer (`restore`), or the request refused (`action: block`).
    `blocklist`: the request refused when a message matches one of `patterns` (regular expressions).
    `moderation`: the request's texts sent to `model` (a `mode: moderation` model) before the call, and
    the request refused where a result fires (gateway/moderation_guardrail.py).
    `models`: the models whose calls it checks (names, route groups, wildcard patterns); None: every model."""

    name: str = Field(min_length=1)
    kind: Literal["pii", "blocklist", "moderation"]
    action: Literal["mask", "block"] | None = None  # None: mask for pii, block for a blocklist and moderation
    entities: list[PIIKind] | None = None  # pii: the kinds it looks for; None: all
    patterns: list[str] = Field(default_factory=list)  # blocklist
    restore: bool = True  # pii, mask: the values put back in the answer (litellm's output_parse_pii)
    # moderation: the model asked; the categories that block (None: any the model flags); a score at or past
    # which a category blocks, in place of the model's own flag for it; whether a request goes on when the
    # model cannot answer (else a 503); the most the check may take, its retries included.
    model: str | None = None
    categories: list[Category] | None = None
    thresholds: dict[Category, float] = Field(default_factory=dict)
    fail_open: bool = False
    timeout_s: float = Field(default=10.0, gt=0)
    models: list[str] | None = None

    @field_validator("thresholds")
    @classmethod
    def _scores(cls, thresholds: dict[str, float]) -> dict[str, float]:
        for category, score in thresholds.items():
            if not 0 < score <= 1:
                raise ValueError(f"{category}: a threshold is a score in (0, 1], not {score}")
        return thresholds

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
        moderating = ("model", "categories", "thresholds", "fail_open", "timeout_s")
        if self.kind != "moderation" and (given := [name for name in moderating if name in self.model_fields_set]):
            raise ValueError(f"{', '.join(given)}: for kind: moderation only")
        if self.kind == "moderation":
            if self.model is None:
                raise ValueError("a moderation guardrail needs model: a model_name with model_info.mode: moderation")
            if self.action == "mask" or self.entities is not None or self.patterns:
                raise ValueError("a moderation guardrail blocks what its model flags: no action: mask, entities or "
                                 "patterns")
            if self.categories is not None and (outside := sorted(set(self.thresholds) - set(self.categories))):
                raise ValueError(f"thresholds: {', '.join(outside)} not among the guardrail's categories")
            self.action = "block"
        elif self.kind == "blocklist":
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
                     serves: Callable[[str], bool], moderation_models: set[str]) -> None:
    """Names unique; each guardrail's `models` known (`serves`), a route group's standing for its models; a
    moderation guardrail's `model` a moderation model, and none in its `models` (a moderation call is
    never moderated: it is the check)."""
    names = [g.name for g in guardrails]
    if len(names) != len(set(names)):
        raise ValueError("guardrails: names must be unique")
    for i, guard in enumerate(guardrails):
        if guard.kind == "moderation":
            if guard.model not in moderation_models:
                raise ValueError(f"guardrails.{i}.model: '{guard.model}' is not a model_name with model_info.mode: "
                                 f"moderation (those here: {', '.join(sorted(moderation_models)) or 'none'})")
            if moderated := sorted(set(guard.models or ()) & moderation_models):
                raise ValueError(f"guardrails.{i}.models: '{moderated[0]}' is a moderation model, whose calls a "
                                 "moderation guardrail does not check")
        for model in guard.models or ():
            if model in groups:  # a route group's guardrail checks the calls to each of its models
                guard.models = [*dict.fromkeys([*(guard.models or ()), *groups[model]])]
            elif not serves(model):
                raise ValueError(f"guardrails.{i}.models: '{model}' is neither a model, a route group nor a "
                                 "wildcard here")
