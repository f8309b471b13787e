"""Wildcard models, litellm's way: a `model_list` entry named with one `*` (`anthropic/*`, `openai/gpt-4*`, or
`*` alone) serves every model name it matches that no other entry names, its `litellm_params.model` taking
the matched part where it has its own `*` (`model_name: "oai/*"` with `model: "openai/*"`: `oai/gpt-4o` is
sent as `openai/gpt-4o`). A team passes a provider's whole catalogue through the gateway, with its keys,
limits, budgets and outcome log, without listing each model.

The most specific pattern wins (the most fixed characters; then the one listed first). A matched name
becomes a deployment of its own the first time it is asked for (its own admission queue, retries and
cooldown), priced as a listed entry is (gateway/model_list_config.py `ModelEntry._priced`): by the
pattern's `model_info` where that sets a price, else by litellm's price map for the model it is sent as
(what the outcome log and budgets charge), else at no cost. At most `max_models`
names are adopted, so clients making up names cannot grow the gateway without end."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.server.errors import bad_request
from gateway.model_list_config import ModelEntry

log = logging.getLogger("pitstop.wildcards")

MAX_MODELS = 1000


def name_matches(pattern: str, name: str) -> bool:
    """Whether `name` is `pattern`, or matches it where it has `*`s (each standing for one or more
    characters, as a wildcard entry's): an API key allowed `anthropic/*` may use `anthropic/claude-x`."""
    if "*" not in pattern:
        return name == pattern
    return re.fullmatch(".+".join(map(re.escape, pattern.split("*"))), name) is not None


@dataclass(frozen=True)
class WildcardPattern:
    entry: ModelEntry
    prefix: str
    suffix: str

    @classmethod
    def of(cls, entry: ModelEntry) -> WildcardPattern:
        prefix, suffix = entry.model_name.split("*")
        return cls(entry, prefix, suffix)

    @property
    def specificity(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def matched(self, name: str) -> str | None:
        """The part of `name` the `*` stands for (never empty), or None when it does not match."""
        if len(name) > self.specificity and name.startswith(self.prefix) and name.endswith(self.suffix):
            return name[len(self.prefix): len(name) - len(self.suffix)]
        return None

    def concrete(self, name: str, part: str) -> ModelEntry:
        """The entry `name` is served by: the pattern's, its provider model taking `part` for its `*`."""
        params = self.entry.litellm_params
        params = params.model_copy(update={"model": params.model.replace("*", part)})
        # priced as a listed entry is, for the model it is sent as (ModelEntry._priced)
        return ModelEntry(model_name=name, litellm_params=params, model_info=self.entry.model_info)


class WildcardModels:
    """The patterns of a config, and the names adopted so far. `adopt` builds a name's deployment (the
    gateway does: gateway/deployment_build.py), once."""

    def __init__(self, entries: list[ModelEntry], max_models: int = MAX_MODELS) -> None:
        patterns = [WildcardPattern.of(entry) for entry in entries]
        # most specific first; sorted() is stable, so among equals the one listed first
        self.patterns = sorted(patterns, key=lambda p: -p.specificity)
        self.max_models = max_models
        self.adopted: dict[str, ModelEntry] = {}
        self.adopt: Callable[[ModelEntry], None] | None = None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, name: str) -> ModelEntry | None:
        """The entry serving `name`, adopted on its first match (its deployment built); None where no
        pattern matches. A 400 once `max_models` names are adopted."""
        if (entry := self.adopted.get(name)) is not None:
            return entry
        for pattern in self.patterns:
            if (part := pattern.matched(name)) is not None:
                break
        else:
            return None
        if len(self.adopted) >= self.max_models:
            raise bad_request(f"the model {name!r} matches {pattern.entry.model_name!r}, but this gateway already "
                              f"serves {self.max_models} models through its wildcards", "model", "model_not_found")
        entry = pattern.concrete(name, part)
        if self.adopt is not None:
            self.adopt(entry)
        self.adopted[name] = entry
        log.info("model %s served through %s as %s", name, pattern.entry.model_name, entry.litellm_params.model)
        return entry
