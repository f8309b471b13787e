"""The `cache.semantic:` section: a chat whose last user message means the same as one answered before
gets that answer (gateway/semantic_cache.py). Off unless set; the defaults are chosen from
bench/gateway_semantic_cache.py (README, "Response cache")."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.strict_config import StrictConfig

BUILT_IN_ENCODERS = ("minilm", "static")


class SemanticCacheConfig(StrictConfig):
    # Cosine of the two last user messages' embeddings at or above which a kept answer is served. 0.95: of
    # real distinct questions 0.1% of MMLU's and RouterBench's were served another's answer, none of
    # GSM8K's, AlpacaEval's, MT-Bench's; every formatting-only re-ask and about three in four light
    # rewordings hit, full rephrasings mostly go upstream (bench/README.md, the semantic response cache).
    similarity_threshold: float = Field(default=0.95, gt=0.0, le=1.0)
    # What embeds the text: `minilm` (all-MiniLM-L6-v2 in the gateway, as vector stores use: no download,
    # ~5 ms a request on one core), `static` (the routers' distilled table, var/routers/encoders/: ~0.2 ms,
    # only where it was built, and 4.9% false hits on MMLU at 0.95), or a model_name with model_info.mode:
    # embedding (called as a /v1/embeddings request from the request's API key: billed, its own row).
    encoder: str = "minilm"
    # Entries a bucket (one model, key, endpoint and everything but the compared text) keeps: each lookup
    # compares against all of them, and on Redis they are its list's bound (the oldest go first).
    max_entries: int = Field(default=1000, gt=0, le=100_000)
    # Entries this replica holds in memory over all buckets (its own, or its copy of Redis's), the least
    # recently used bucket going first: about 1.5 KB each at MiniLM's 384 dimensions.
    max_total_entries: int = Field(default=50_000, gt=0)
    # A longer compared text is matched exactly only: a long prompt's embedding is its shared bulk (a
    # passage, few-shot examples), so two prompts differing in the question they end with embed alike.
    max_text_chars: int = Field(default=1000, gt=0)

    @model_validator(mode="after")
    def _total_holds_a_bucket(self) -> SemanticCacheConfig:
        if self.max_total_entries < self.max_entries:
            raise ValueError(f"max_total_entries ({self.max_total_entries}) must be at least max_entries "
                             f"({self.max_entries})")
        return self
