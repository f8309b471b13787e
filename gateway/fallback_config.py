"""The `fallbacks:` section: which models answer when a model cannot (gateway/fallbacks.py). litellm's
`fallbacks` and `context_window_fallbacks` lists of one-key mappings (`[{gpt-4o: [claude]}]`) are read
as the mappings they stand for."""

from __future__ import annotations

from pydantic import Field, field_validator

from gateway.strict_config import StrictConfig


class FallbacksConfig(StrictConfig):
    # model -> models to try in order once every deployment of it has failed or is cooling down (or its
    # queue is full): connection errors, 429 and 5xx, before anything reached the client.
    on_error: dict[str, list[str]] = Field(default_factory=dict)
    # model -> models with longer contexts, for a prompt past its own (a 400 `context_length_exceeded`).
    on_context_window: dict[str, list[str]] = Field(default_factory=dict)
    # A route group's pick that cannot answer falls to the group's other models in the router's order of
    # preference (after any chain above).
    route_groups: bool = True
    max_models: int = Field(default=3, ge=1)  # models tried after the first, at most

    @field_validator("on_error", "on_context_window", mode="before")
    @classmethod
    def _litellm_lists(cls, value: object) -> object:
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            merged: dict = {}
            for item in value:
                merged.update(item)
            return merged
        return value

    def models(self) -> set[str]:
        """Every model the chains name, on either side."""
        return {name for chains in (self.on_error, self.on_context_window)
                for model, chain in chains.items() for name in (model, *chain)}

    def without(self, dropped: set[str]) -> FallbacksConfig:
        """The chains with `dropped` models (left out for want of an API key) taken out."""
        def kept(chains: dict[str, list[str]]) -> dict[str, list[str]]:
            return {model: [m for m in chain if m not in dropped] for model, chain in chains.items()
                    if model not in dropped}
        return self.model_copy(update={"on_error": kept(self.on_error),
                                       "on_context_window": kept(self.on_context_window)})
