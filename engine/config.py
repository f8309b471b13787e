from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from engine.hybrid_attention import HybridAttention
from engine.thinking_budget import DEFAULT_EFFORT_BUDGETS

if TYPE_CHECKING:
    from engine.net_guard import OutboundPolicy

SPECULATIVE_METHODS = ("ngram", "draft_model", "eagle", "eagle3")
MODEL_METHODS = ("draft_model", "eagle", "eagle3")  # the methods that draft with `model`
# --kv-cache-dtype, as vLLM's: "auto" stores K/V in the model's dtype; the fp8 formats store one byte an
# element, half of bf16 (engine/model/kv_quant.py). "fp8" is e4m3, vLLM's default fp8 format.
KVCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KVCacheDtype)


def kv_element_bytes(kv_cache_dtype: str, model_bytes: int) -> int:
    """Bytes a cached K or V element takes: one in fp8, else the model's `model_bytes`."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
    return model_bytes if kv_cache_dtype == "auto" else 1


# --quantization: W8A8 projections (engine/model/quant_config.py), one byte a weight; or W4A16 (int4),
# half a byte a weight plus a scale and zero point a group of 128.
Quantization = Literal["int8", "fp8", "int4"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DRAFT_POLICIES = ("fixed", "goodput")
ACCEPTANCE_METHODS = ("rejection_sampler", "coupled")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding, vLLM's `speculative_config` fields: each decoding request's step also
    checks up to `num_speculative_tokens` drafted tokens, all in one forward pass (engine/speculation.py).
    `ngram` (prompt lookup) drafts what followed the latest earlier occurrence of the sequence's last
    `prompt_lookup_max` .. `prompt_lookup_min` tokens, longest first: no second model, nothing to load.
    `draft_model` drafts with `model`, a smaller model folder of the same vocabulary (engine/draft_model.py);
    as at vLLM, naming a `model` without a method picks it. `eagle` drafts with an EAGLE head, `model` its
    folder: one decoder layer over the target's own features (engine/eagle.py); `eagle3` with an EAGLE-3
    head, over three of the target's layers and a reduced draft vocabulary (engine/eagle3.py).

    `acceptance_method` (vLLM's field and default): how a sampled request checks a draft model's drafts.
    "rejection_sampler" keeps a draft x with probability min(1, p(x) / q(x)) and otherwise draws from
    norm(max(0, p - q)) (engine/model/rejection_sampler.py): the target's distribution, and the most drafts
    any such rule keeps. "coupled" draws the draft and the target with the same noise and keeps the draft
    where the target's own sample equals it: fewer drafts held, but a seeded answer is plain decoding's token
    for token. Greedy requests keep a draft where it is the argmax either way, and n-gram drafts (a point
    mass: rejection sampling keeps one with probability p(x) and otherwise draws from p without it, which
    comparing with the target's own sample does) are checked that way under both."""

    method: str | None = None  # None: "draft_model" with a `model`, else "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    model: str | None = None  # the draft model's folder (method "draft_model"), or the EAGLE head's ("eagle")
    # Pitstop's own: "fixed" drafts whatever the lookup finds, up to num_speculative_tokens; "goodput" cuts
    # each step's drafts to the length with the most expected tokens a second (engine/draft_length.py),
    # priced by `step_time_profile` (a profile file, `pitstop engine profile`), or a simulator's own model.
    draft_policy: str = "fixed"
    step_time_profile: str | None = None
    # With a draft model and "goodput": what the draft's passes cost (its own profile), priced beside the check.
    draft_step_time_profile: str | None = None
    acceptance_method: str = "rejection_sampler"

    def __post_init__(self) -> None:
        if self.method is None:
            object.__setattr__(self, "method", "ngram" if self.model is None else "draft_model")
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative method {self.method!r} is not one of {', '.join(SPECULATIVE_METHODS)}")
        if (self.method in MODEL_METHODS) != (self.model is not None):
            raise ValueError(f"method {self.method!r} drafts with a model: give its folder as `model`" if self.model is None
                             else f"method {self.method!r} drafts without a model: drop `model`, or use 'draft_model'")
        if self.num_speculative_tokens < 1:
            raise ValueError("num_speculative_tokens must be at least 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min and prompt_lookup_max must satisfy 1 <= min <= max")
        if self.acceptance_method not in ACCEPTANCE_METHODS:
            lossy = (" (vLLM's typical acceptance sampler keeps drafts the target's distribution would not: "
                     "Pitstop keeps that distribution)" if self.acceptance_method == "typical_acceptance_sampler" else "")
            raise ValueError(f"acceptance_method {self.acceptance_method!r} is not one of "
                             f"{', '.join(ACCEPTANCE_METHODS)}{lossy}")
        if self.draft_policy not in DRAFT_POLICIES:
            raise ValueError(f"draft_policy {self.draft_policy!r} is not one of {', '.join(DRAFT_POLICIES)}")
        if self.draft_step_time_profile is not None and not (self.draft_policy == "goodput"
                                                              and self.method in MODEL_METHODS):
            raise ValueError("draft_step_time_profile prices a draft model's passes for draft_policy 'goodput': "
                             "it needs both")
        if self.draft_policy == "goodput" and self.method in MODEL_METHODS and self.draft_step_time_profile is None:
            raise ValueError("draft_policy 'goodput' with a draft model prices the draft's passes too: give "
                             "draft_step_time_profile (`pitstop engine profile --model DRAFT`, or a roofline of it)")


@dataclass(frozen=True)
class ImageLimits:
    """Image inputs (engine/openai_images.py): at most `max_images` a prompt (vLLM's --limit-mm-per-prompt), each
    at most `max_bytes` encoded, an http(s) URL fetched within `fetch_timeout_s`, from `allowed_domains` only where
    set (vLLM's --allowed-media-domains), and only to the addresses the URL rules allow (engine/net_guard.py)."""

    max_images: int = 8
    max_bytes: int = 20 << 20
    fetch_timeout_s: float = 10.0
    allowed_domains: frozenset[str] | None = None  # the hosts an image URL may name (lower case); None: any
    # --allow-private-media-urls: loopback, RFC 1918, CGNAT and unique-local addresses fetched (true, as the
    # gateway's outbound.allow_private); link-local (metadata), multicast, unspecified, reserved never are
    allow_private: bool = True
    # An engine in the gateway's process: the gateway's `outbound:` rules (reloaded), in place of allow_private
    url_policy: Callable[[], OutboundPolicy] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_images < 0 or self.max_bytes < 1 or not self.fetch_timeout_s > 0:
            raise ValueError("image limits: max_images >= 0, max_bytes >= 1 and fetch_timeout_s > 0")
        if self.allowed_domains is not None:
            object.__setattr__(self, "allowed_domains", frozenset(d.lower() for d in self.allowed_domains))


@dataclass
class EngineConfig:
    """Sizes and limits of one engine instance. Block counts are in KV blocks of `block_size` tokens."""

    block_size: int = 16
    num_blocks: int = 1024
    max_model_len: int = 4096
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    # Longest prefill chunk one request may take in a step; keeps decodes flowing beside long prompts.
    long_prefill_token_threshold: int = 512
    # Share of all KV blocks that TTL pins may hold at once.
    pin_budget_fraction: float = 0.5
    enable_prefix_caching: bool = True
    # Pins hold against admitting waiting work while other work runs (Continuum's semantics: a pin
    # is memory in use until its TTL); running requests still reclaim pins before preempting, and
    # an idle engine reclaims them rather than stall. False: any allocation may reclaim pins.
    pins_hold_admission: bool = True
    # A session's next turn has arrived while its pin is live: hold the pin at least this long more,
    # so the KV does not expire while the turn waits in the queue. None: 30 s, or 0 with a host or disk
    # tier, where a context lost while its turn waits comes back over the host link or is read ahead from
    # the drive while it waits (the held memory would keep other work waiting: bench/host_kv.py,
    # bench/disk_kv.py).
    pin_hold_on_arrival_s: float | None = None
    # Admit a waiting request (while others run) only when its whole uncached prompt fits in free
    # blocks: a long re-prefill started on its first chunk would otherwise grow into preemptions.
    # False: admit on the first chunk, as vLLM does (bench/agents.py measures both).
    admit_whole_prompt: bool = True
    # Speculative decoding (n-gram drafts checked in the decode step); None: one token per step.
    speculative: SpeculativeConfig | None = None
    # Host memory for KV blocks the GPU evicts, in blocks (engine/host_cache.py); 0: none. A prefix
    # found there is copied back instead of computed again. Needs prefix caching.
    num_host_blocks: int = 0
    # Disk slots for KV blocks the host tier evicts (without one, the GPU), in blocks (engine/disk_cache.py);
    # 0: none. The runner holds the file (engine/disk_store.py). Needs prefix caching. What the tier holds
    # survives a restart: its index is written every `disk_index_interval_s` (engine clock) and at close.
    num_disk_blocks: int = 0
    disk_index_interval_s: float = 30.0
    # Read a waiting request's disk blocks into memory before admitting it, while others run (engine/disk_cache.py);
    # False loads them from the drive in its step, holding the whole step up (an ablation: bench/disk_kv.py).
    disk_read_ahead: bool = True
    # Every layer of the model attends to at most this many tokens back (Mistral-7B-v0.1's 4,096): the
    # engine sets it from its runner's model; None where some layer reads the whole context.
    attention_window: int | None = None
    # A model whose other layers read the whole context (Gemma 3): the engine sets it from its runner's model;
    # it keeps every block, and its steps are priced on the keys each layer reads (engine/hybrid_attention.py).
    hybrid_attention: HybridAttention | None = None
    # With such a model, release the KV blocks that slid out of the window as a request moves on
    # (engine/block_manager.py); False keeps them to its end (an ablation: bench/sliding_window.py).
    release_slid_out_blocks: bool = True
    # LoRA adapters served at once (engine/model/lora.py), and the largest rank one may have.
    max_loras: int = 8
    max_lora_rank: int = 64
    # `reasoning_effort` -> the thinking budget it asks for (engine/thinking_budget.py; vLLM's defaults).
    reasoning_effort_budgets: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS))
    # A vision model's image inputs: how many a prompt, how large, how long a fetch may take.
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # Completions may send `prompt_embeds` (engine/prompt_embeds.py; vLLM's --enable-prompt-embeds).
    enable_prompt_embeds: bool = False

    def __post_init__(self) -> None:
        assert self.block_size > 0 and self.num_blocks > 0
        assert 0.0 <= self.pin_budget_fraction <= 1.0
        assert self.max_num_batched_tokens >= self.max_num_seqs
        assert self.long_prefill_token_threshold > 0
        assert self.num_host_blocks >= 0 and self.num_disk_blocks >= 0 and self.disk_index_interval_s > 0
        assert self.max_loras >= 0 and self.max_lora_rank > 0
        if (self.num_host_blocks or self.num_disk_blocks) and not self.enable_prefix_caching:
            raise ValueError("a host or disk KV tier is keyed by the prefix cache: it needs enable_prefix_caching")
        budgets = self.reasoning_effort_budgets
        if set(budgets) != set(DEFAULT_EFFORT_BUDGETS) or not all(isinstance(v, int) and v >= 0 for v in budgets.values()):
            raise ValueError(f"reasoning_effort_budgets: a token count (>= 0) for each of {', '.join(DEFAULT_EFFORT_BUDGETS)}")

    @property
    def arrival_pin_hold_s(self) -> float:
        if self.pin_hold_on_arrival_s is not None:
            return self.pin_hold_on_arrival_s
        return 0.0 if self.num_host_blocks or self.num_disk_blocks else 30.0

    @property
    def pin_budget_blocks(self) -> int:
        return int(self.num_blocks * self.pin_budget_fraction)
