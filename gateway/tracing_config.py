"""The `tracing:` section: OpenTelemetry spans of each API request (gateway/tracing.py), exported over
OTLP/HTTP. Present, tracing is on; absent, off. Unset fields take OpenTelemetry's standard variables."""

from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from engine.tracing import endpoint_from_env, traces_endpoint
from gateway.strict_config import StrictConfig

DEFAULT_SERVICE_NAME = "pitstop-gateway"


class TracingConfig(StrictConfig):
    # The collector's OTLP/HTTP traces URL (a base URL gets /v1/traces); unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    # else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces.
    otlp_endpoint: str | None = None
    service_name: str | None = None  # unset: OTEL_SERVICE_NAME, else pitstop-gateway
    # The share of new traces kept; a client's traceparent decides for its own trace (parent-based sampling).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    headers: dict[str, str] | None = None  # sent with each export, e.g. a collector's API key (os.environ/...)

    @field_validator("otlp_endpoint")
    @classmethod
    def _an_otlp_url(cls, url: str | None) -> str | None:
        return None if url is None else traces_endpoint(url)  # ValueError names what is wrong

    @model_validator(mode="after")
    def _an_endpoint_somewhere(self) -> TracingConfig:
        if self.otlp_endpoint is None:
            from_env = endpoint_from_env()
            if from_env is None:
                raise ValueError("tracing.otlp_endpoint is not set, nor is OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "
                                 "(or OTEL_EXPORTER_OTLP_ENDPOINT): where should spans go?")
            try:
                self.otlp_endpoint = traces_endpoint(from_env)
            except ValueError as exc:
                raise ValueError(f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {exc}") from None
        if self.service_name is None:
            self.service_name = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
        return self

    @property
    def disabled_by_env(self) -> bool:
        """OpenTelemetry's OTEL_SDK_DISABLED=true: spans off whatever the file says."""
        return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
