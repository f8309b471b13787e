"""Roofline step time: a step costs a fixed overhead plus the slower of its compute and its HBM traffic.

    compute = (2 x matmul params x tokens + 2 x lm_head params x sampled seqs + attention FLOPs)
              / (peak FLOP/s x flops_efficiency)
    memory  = (weight bytes + KV bytes read + KV bytes written) / (HBM bytes/s x memory_efficiency)

Decode steps are memory-bound (every step streams all weights), large prefills compute-bound.
A model whose sliding-window layers sit beside full-attention ones (Gemma 3) reads, per layer, the window or
the whole context: its step's shape counts the keys read averaged over the layers (engine/hybrid_attention.py),
which prices both the KV reads and the attention FLOPs exactly, both being per token of every layer.
Checking speculative drafts adds query rows to a decode: nearly free while the step stays under the
memory roof (small batches), paid in full once the batch's rows make it compute-bound.
Activations and the embedding lookup are ignored (tiny next to weights and KV at these sizes).
KV blocks copied to or from the host tier (engine/host_cache.py) add their bytes over the host link
(PCIe), not overlapped with the step: the engine performs them before the forward pass. Blocks loaded from
the disk tier (engine/disk_cache.py) add their read from the drive before that copy; blocks written to it
cross the link into host memory and are written behind the step (engine/disk_store.py), so only that copy
adds.

Tensor parallelism over N GPUs divides weights and KV per GPU and multiplies bandwidth and FLOP/s;
all-reduce traffic is not modelled (NVLink keeps it to roughly 5-10% of a step), nor is pipeline
parallelism. A quantized engine (`quantization`: the W8A8 projections of engine/model/quant_linear.py)
streams its attention and dense MLP projections at one byte a weight and multiplies them at the format's
peak (fp8 or int8 tensor cores; the bf16 peak on a GPU without them); W4A16 (int4, engine/model/int4_linear.py)
streams half a byte a weight plus a bf16 scale and zero point a group of 128 and multiplies at the bf16
peak (its activations stay bf16); embeddings, the LM head, routers and experts keep `weight_bytes`, but for
gpt-oss's MXFP4 experts (a checkpoint whose `quantization_config` says `mxfp4`, served packed:
engine/model/mxfp4.py), stored and streamed at 4.25 bits a weight (`expert_weight_bytes`) and multiplied at the
bf16 peak: what a fused MXFP4 kernel (vLLM's) reads; this engine's torch path also writes and reads a bf16
copy of each routed expert, so it is slower than priced here.

Mixture-of-experts models (Qwen3-MoE, Mixtral) compute with the experts each token is routed to, and
a step streams only the experts some token of it chose: with T tokens each picking k of E experts,
E x (1 - (1 - k/E)^T) per sparse layer on average under balanced routing, so decode time grows with
the batch until every expert is read, where a dense model's stays flat."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from engine.batch import StepShape
from engine.config import QUANTIZATIONS, kv_element_bytes
from engine.hybrid_attention import HybridAttention, hybrid_attention
from engine.model.config import ModelConfig, expert_fields, sliding_layer_count
from engine.model.families import text_config_of
from engine.roofline_parsed import PARSED_TYPES, parsed_shape_fields

MIB = 1 << 20
# Bytes a quantized projection weight streams: int4 stores a bf16 scale and zero point a group of 128.
QUANTIZED_WEIGHT_BYTES = {"int8": 1.0, "fp8": 1.0, "int4": 0.5 + 4 / 128}
# An MXFP4 expert weight: a 4-bit E2M1 value and a one-byte scale per 32 (engine/model/mxfp4.py).
MXFP4_WEIGHT_BYTES = (4 + 8 / 32) / 8


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: int
    hbm_bytes_per_s: float
    peak_flops_bf16: float  # dense, no sparsity
    peak_flops_fp8: float | None = None
    peak_ops_int8: float | None = None
    # The host link (PCIe) one way, per GPU: what the host KV tier's copies cross.
    host_link_bytes_per_s: float = 64e9
    # The drive the disk KV tier's file is on, shared by a tensor-parallel engine's ranks: one NVMe SSD
    # (PCIe Gen4 x4 datasheets: ~6-7 GB/s sequential read, ~3-4 GB/s write).
    disk_read_bytes_per_s: float = 6e9
    disk_write_bytes_per_s: float = 3e9


# Memory is what nvidia-smi reports as total; bandwidth and dense FLOP/s from NVIDIA's datasheets;
# the host link is PCIe Gen5 x16 (H100, H200) or Gen4 x16 (A100).
GPUS: dict[str, GPUSpec] = {
    "H100-SXM": GPUSpec("H100-SXM", 81559 * MIB, 3.35e12, 989e12, 1979e12, 1979e12, 64e9),
    "H200": GPUSpec("H200", 143771 * MIB, 4.8e12, 989e12, 1979e12, 1979e12, 64e9),
    "A100-80G": GPUSpec("A100-80G", 81920 * MIB, 2.0e12, 312e12, None, 624e12, 32e9),
}


@dataclass(frozen=True)
class ModelShape:
    """A decoder with grouped-query attention and gated (SwiGLU) MLPs, e.g. Llama; with `num_experts`,
    `num_sparse_layers` of its layers are instead that many experts of `expert_intermediate_size`,
    `experts_per_token` of them per token (e.g. Qwen3-MoE, Mixtral)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    weight_bytes: int = 2  # bytes per weight: 2 for bf16
    kv_bytes: int = 2  # bytes per cached K or V element
    tie_word_embeddings: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    num_sparse_layers: int = 0
    sliding_window: int = 0  # every layer attends to at most this many tokens back (0: the whole context)...
    num_full_layers: int = 0  # ...but these, which read it all (Gemma 3: 10 of 62 layers; their KV is kept)
    quantization: str | None = None  # "int8" / "fp8": W8A8 projections, one byte a weight; "int4": W4A16
    expert_weight_bytes: float = 0.0  # bytes an expert weight takes, 0: `weight_bytes`; MXFP4: 4.25 / 8
    # MLA's cached latent a token a layer (0: K and V of every KV head), its weights a layer (0: q, k, v, o), and
    # always-on shared experts in the sparse layers: engine/roofline_parsed.py.
    kv_values_per_layer: int = 0
    attention_params_per_layer: int = 0
    shared_expert_intermediate_size: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @classmethod
    def from_hf_config(cls, config: dict, name: str | None = None, weight_bytes: int = 2) -> ModelShape:
        """From a Hugging Face `config.json` dict (Llama, Mistral, Qwen2/3, Qwen3-MoE, Mixtral, Gemma 3, Phi-3 keys;
        a multimodal Gemma 3's language model)."""
        config = text_config_of(config)
        if config.get("model_type") in PARSED_TYPES:  # as the engine parses them
            return cls(**parsed_shape_fields(ModelConfig.from_dict(config), name), weight_bytes=weight_bytes,
                       kv_bytes=max(weight_bytes, 2))
        heads = config["num_attention_heads"]
        experts = expert_fields(config.get("model_type", "llama"), config)
        window, sliding = sliding_layer_count(config.get("model_type", "llama"), config)  # as the engine reads it
        return cls(
            name=name or config.get("_name_or_path") or config.get("model_type", "model"),
            num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"], num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            intermediate_size=config["intermediate_size"], vocab_size=config["vocab_size"],
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            weight_bytes=weight_bytes, kv_bytes=max(weight_bytes, 2),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", config.get("model_type") == "gemma3_text")),
            num_experts=experts.get("num_experts", 0), experts_per_token=experts.get("num_experts_per_tok", 0),
            expert_intermediate_size=experts.get("moe_intermediate_size", 0),
            num_sparse_layers=len(experts.get("sparse_layers", ())),
            sliding_window=window, num_full_layers=config["num_hidden_layers"] - sliding if window else 0,
            expert_weight_bytes=MXFP4_WEIGHT_BYTES if _mxfp4(config) else 0.0)

    @property
    def hybrid_attention(self) -> HybridAttention | None:
        """With sliding and full layers: what a step's shape prices each one reading (engine/batch.py)."""
        if not self.num_full_layers:
            return None
        return hybrid_attention(self.sliding_window, self.num_layers - self.num_full_layers, self.num_layers)

    @property
    def shared_layer_params(self) -> int:
        """Matmul weights every token uses: q, k, v, o projections, dense layers' gate/up/down MLP,
        sparse layers' routers."""
        shared_experts = 3 * self.hidden_size * self.shared_expert_intermediate_size
        return self.projection_params + self.num_sparse_layers * (self.hidden_size * self.num_experts + shared_experts)

    @property
    def projection_params(self) -> int:
        """The q, k, v, o projections and the dense layers' gate/up/down: what `quantization` covers."""
        q_and_o = 2 * self.hidden_size * self.num_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        mlp = 3 * self.hidden_size * self.intermediate_size
        attention = self.attention_params_per_layer or q_and_o + k_and_v
        return self.num_layers * attention + (self.num_layers - self.num_sparse_layers) * mlp

    @property
    def quantized_params(self) -> int:
        """Weights stored quantized under `quantization` (none without it)."""
        return self.projection_params if self.quantization else 0

    @property
    def quantized_weight_bytes(self) -> float:
        """Bytes each of `quantized_params` takes (QUANTIZED_WEIGHT_BYTES; `weight_bytes` unquantized)."""
        return QUANTIZED_WEIGHT_BYTES[self.quantization] if self.quantization else self.weight_bytes

    @property
    def expert_bytes(self) -> float:
        """Bytes each expert weight takes (MXFP4: 4.25 bits)."""
        return self.expert_weight_bytes or self.weight_bytes

    @property
    def expert_params(self) -> int:
        """One expert's gate/up/down weights in every sparse layer."""
        return self.num_sparse_layers * 3 * self.hidden_size * self.expert_intermediate_size

    @property
    def layer_params(self) -> int:
        """Matmul weights of all decoder layers, every expert included."""
        return self.shared_layer_params + self.num_experts * self.expert_params

    @property
    def active_layer_params(self) -> int:
        """Matmul weights one token computes with."""
        return self.shared_layer_params + self.experts_per_token * self.expert_params

    def experts_read(self, tokens: int) -> float:
        """Expected distinct experts a sparse layer reads for `tokens` tokens under balanced routing."""
        if not self.num_experts:
            return 0.0
        return self.num_experts * (1 - (1 - self.experts_per_token / self.num_experts) ** tokens)

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        embeddings = self.lm_head_params * (1 if self.tie_word_embeddings else 2)
        return self.layer_params + embeddings

    @property
    def weight_memory_bytes(self) -> int:
        """What the weights occupy on the GPU(s), embeddings included."""
        return round(self.num_params * self.weight_bytes
                     - self.quantized_params * (self.weight_bytes - self.quantized_weight_bytes)
                     - self.num_experts * self.expert_params * (self.weight_bytes - self.expert_bytes))

    @property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * (self.kv_values_per_layer or 2 * self.num_kv_heads * self.head_dim) * self.kv_bytes


def _mxfp4(config: dict) -> bool:
    return (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"


MODELS: dict[str, ModelShape] = {
    "llama-3.1-8b": ModelShape("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256),
    "llama-3.1-70b": ModelShape("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256),
    # The Llama 3 family's draft model: its tokenizer, tied embeddings.
    "llama-3.2-1b": ModelShape("llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, head_dim=64, tie_word_embeddings=True),
    "qwen3-30b-a3b": ModelShape("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, head_dim=128, num_experts=128,
                                experts_per_token=8, expert_intermediate_size=768, num_sparse_layers=48),
    # Every layer slides over 4,096 tokens: a request holds a window of KV (engine/block_manager.py).
    "mistral-7b-v0.1": ModelShape("mistral-7b-v0.1", 32, 4096, 32, 8, 14336, 32000, sliding_window=4096),
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, num_experts=8, experts_per_token=2,
                               expert_intermediate_size=14336, num_sparse_layers=32),
    # openai/gpt-oss-20b and -120b as released: MXFP4 experts (served packed), 128-token windows every other layer.
    **{name: ModelShape.from_hf_config({
        "model_type": "gpt_oss", "num_hidden_layers": layers, "hidden_size": 2880, "num_attention_heads": 64,
        "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 2880, "vocab_size": 201088,
        "num_local_experts": experts, "num_experts_per_tok": 4, "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2), "tie_word_embeddings": False,
        "quantization_config": {"quant_method": "mxfp4"}}, name) for name, layers, experts in (
        ("gpt-oss-20b", 24, 32), ("gpt-oss-120b", 36, 128))},
    # google/gemma-3-27b-it's text_config (transformers' defaults for what it leaves out): 52 of its 62 layers
    # slide over 1,024 tokens; its full layers keep every block, and a step reads each layer's keys.
    "gemma-3-27b": ModelShape.from_hf_config({
        "model_type": "gemma3_text", "num_hidden_layers": 62, "hidden_size": 5376, "num_attention_heads": 32,
        "num_key_value_heads": 16, "head_dim": 128, "intermediate_size": 21504, "vocab_size": 262208,
        "tie_word_embeddings": True, "sliding_window": 1024}, "gemma-3-27b"),
    # microsoft/Phi-3.5-mini-instruct and Phi-4-mini-instruct (fused q/k/v and gate/up: the same weights).
    "phi-3.5-mini": ModelShape.from_hf_config({
        "model_type": "phi3", "num_hidden_layers": 32, "hidden_size": 3072, "num_attention_heads": 32,
        "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064, "tie_word_embeddings": False,
        "max_position_embeddings": 131072, "sliding_window": 262144}, "phi-3.5-mini"),
    "phi-4-mini": ModelShape.from_hf_config({
        "model_type": "phi3", "num_hidden_layers": 32, "hidden_size": 3072, "num_attention_heads": 24,
        "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 200064, "tie_word_embeddings": True,
        "max_position_embeddings": 131072, "sliding_window": 262144}, "phi-4-mini"),
}


@dataclass(frozen=True)
class RooflineStepTime:
    model: ModelShape
    gpu: GPUSpec
    tensor_parallel: int = 1
    # Achieved fractions of the datasheet peaks, as commonly measured for vLLM/SGLang on H100-class
    # GPUs: decode GEMV/attention kernels stream weights and KV at ~70-80% of HBM bandwidth, prefill
    # GEMMs reach ~50-60% of dense peak (model FLOPs utilisation) with FlashAttention.
    memory_efficiency: float = 0.75
    flops_efficiency: float = 0.55
    # Per-step CPU and launch cost not hidden by CUDA graphs: scheduling, input prep, sampling.
    overhead_s: float = 0.4e-3
    # Achieved share of the host link for block copies from pinned memory (~50 of PCIe Gen5's 64 GB/s).
    host_link_efficiency: float = 0.8
    # Achieved share of the drive's sequential read rate for whole-block reads (a block is 1-2 MiB).
    disk_efficiency: float = 0.8
    # Seconds per unit of each step feature, derived from the above so predict() is a few float ops.
    _s_per_token: float = field(init=False, repr=False, compare=False)  # matmuls through all layers
    _s_per_sampled: float = field(init=False, repr=False, compare=False)  # the lm_head matmul
    _s_per_pair: float = field(init=False, repr=False, compare=False)  # attention, per query-key pair
    _s_weights: float = field(init=False, repr=False, compare=False)  # streaming the shared weights once
    _s_per_expert: float = field(init=False, repr=False, compare=False)  # streaming one expert's weights
    _s_per_kv_token: float = field(init=False, repr=False, compare=False)  # reading or writing KV
    _s_per_kv_token_moved: float = field(init=False, repr=False, compare=False)  # host tier copies
    _s_per_disk_token_read: float = field(init=False, repr=False, compare=False)  # disk tier reads

    def __post_init__(self) -> None:
        assert self.tensor_parallel >= 1
        m = self.model
        flops_per_s = self.gpu.peak_flops_bf16 * self.flops_efficiency * self.tensor_parallel
        quantized_peak = {"fp8": self.gpu.peak_flops_fp8, "int8": self.gpu.peak_ops_int8}.get(m.quantization or "")
        quantized_per_s = (quantized_peak or self.gpu.peak_flops_bf16) * self.flops_efficiency * self.tensor_parallel
        bytes_per_s = self.gpu.hbm_bytes_per_s * self.memory_efficiency * self.tensor_parallel
        quantized = m.quantized_params
        constants = {
            # 2 FLOPs per multiply-add; quantized projections at their format's rate (W4A16's is bf16's).
            "_s_per_token": 2 * (m.active_layer_params - quantized) / flops_per_s + 2 * quantized / quantized_per_s,
            "_s_per_sampled": 2 * m.lm_head_params / flops_per_s,
            # QK^T and PV: two matmuls of 2 FLOPs per multiply-add, per head per layer.
            "_s_per_pair": 4 * m.num_layers * m.num_heads * m.head_dim / flops_per_s,
            # Streamed every step: all shared matmul weights (the embedding table is only gathered by
            # row), and each expert that some token of the step is routed to.
            "_s_weights": ((m.shared_layer_params - quantized + m.lm_head_params) * m.weight_bytes
                           + quantized * m.quantized_weight_bytes) / bytes_per_s,
            "_s_per_expert": m.expert_params * m.expert_bytes / bytes_per_s,
            "_s_per_kv_token": m.kv_bytes_per_token / bytes_per_s,
            # Each GPU copies its shard of a block's heads over its own link.
            "_s_per_kv_token_moved": m.kv_bytes_per_token / (
                self.gpu.host_link_bytes_per_s * self.host_link_efficiency * self.tensor_parallel),
            # Every rank reads its shard from the one drive: all of a token's KV crosses it.
            "_s_per_disk_token_read": m.kv_bytes_per_token / (self.gpu.disk_read_bytes_per_s * self.disk_efficiency),
        }
        for name, value in constants.items():
            object.__setattr__(self, name, value)

    def predict(self, shape: StepShape) -> float:
        compute_s, memory_s = self.breakdown(shape)
        # Host and disk tier copies run before the forward pass, synchronously: they add.
        return (self.overhead_s + (compute_s if compute_s > memory_s else memory_s)
                + self._s_per_kv_token_moved * shape.kv_tokens_moved + self._s_per_disk_token_read * shape.disk_tokens_read)

    prices_kv_transfers = True
    prices_disk_reads = True

    def breakdown(self, shape: StepShape) -> tuple[float, float]:
        """(compute seconds, memory seconds) of a step, before overhead: which roof it is under."""
        tokens = shape.num_tokens
        # Upper bound: a mid-prompt chunk samples nothing. A draft token is one more sampled row.
        sampled = shape.prefill_seqs + shape.decode_seqs + shape.draft_tokens
        # Attention pairs: prefill chunks and drafts see their context (an upper bound under causal
        # masking); decodes see kv_tokens, which also counts the prefill contexts once: small next to the rest.
        pairs = shape.prefill_attention + shape.kv_tokens
        compute_s = self._s_per_token * tokens + self._s_per_sampled * sampled + self._s_per_pair * pairs
        # KV traffic: read every sequence's context, write the new tokens' KV.
        memory_s = self._s_weights + self._s_per_kv_token * (shape.kv_tokens + tokens)
        if self.model.num_experts:
            memory_s += self._s_per_expert * self.model.experts_read(tokens)
        return compute_s, memory_s

    def kv_capacity_blocks(self, block_size: int = 16, gpu_memory_utilization: float = 0.9,
                           reserve_bytes: int = 2 << 30) -> int:
        return kv_capacity_blocks(self.model, self.gpu, block_size, gpu_memory_utilization,
                                  self.tensor_parallel, reserve_bytes)

    def to_json(self) -> dict:
        params = {"gpu": asdict(self.gpu), "tensor_parallel": self.tensor_parallel,
                  "memory_efficiency": self.memory_efficiency, "flops_efficiency": self.flops_efficiency,
                  "overhead_s": self.overhead_s, "host_link_efficiency": self.host_link_efficiency,
                  "disk_efficiency": self.disk_efficiency}
        return {"kind": "roofline", "params": params, "model": asdict(self.model)}

    @classmethod
    def from_json(cls, profile: dict) -> RooflineStepTime:
        params = dict(profile["params"])
        gpu = GPUSpec(**params.pop("gpu"))
        return cls(ModelShape(**profile["model"]), gpu, **params)

    @classmethod
    def builtin(cls, model: str = "llama-3.1-8b", gpu: str = "H100-SXM", tensor_parallel: int = 1,
                quantization: str | None = None, kv_cache_dtype: str = "auto",
                **efficiencies: float) -> RooflineStepTime:
        model_time = cls(MODELS[model], GPUS[gpu], tensor_parallel, **efficiencies)
        return model_time.with_quantization(quantization).with_kv_cache_dtype(kv_cache_dtype)

    def with_quantization(self, quantization: str | None) -> RooflineStepTime:
        """The same GPU serving the model with W8A8 (`int8`, `fp8`) or W4A16 (`int4`) projections, or as it
        is (None)."""
        if quantization == self.model.quantization:
            return self
        if quantization not in (None, *QUANTIZATIONS):
            raise ValueError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
        name = self.model.name.removesuffix(f"-{self.model.quantization}") + (f"-{quantization}" if quantization else "")
        return replace(self, model=replace(self.model, name=name, quantization=quantization))

    def with_kv_cache_dtype(self, kv_cache_dtype: str) -> RooflineStepTime:
        """The same GPU with the model's KV stored as `kv_cache_dtype` (engine/config.py): an fp8 cache
        holds twice the tokens of a bf16 one and decodes read half the bytes."""
        kv_bytes = kv_element_bytes(kv_cache_dtype, self.model.kv_bytes)
        if kv_bytes == self.model.kv_bytes:
            return self
        return replace(self, model=replace(self.model, name=f"{self.model.name}-kv-{kv_cache_dtype}", kv_bytes=kv_bytes))


def kv_capacity_blocks(model: ModelShape, gpu: GPUSpec, block_size: int = 16,
                       gpu_memory_utilization: float = 0.9, tensor_parallel: int = 1,
                       reserve_bytes: int = 2 << 30) -> int:
    """KV blocks that fit, vLLM-style: per GPU, memory x utilization - weight shard - a reserve for
    activations and the CUDA context (vLLM measures it by a profiling run: ~1-3 GiB for these models);
    each GPU holds 1/N of every block's heads, so the engine-wide block count is the per-GPU one."""
    per_gpu = gpu.memory_bytes * gpu_memory_utilization - model.weight_memory_bytes / tensor_parallel
    free = per_gpu - reserve_bytes
    block_bytes = model.kv_bytes_per_token * block_size / tensor_parallel
    if free < block_bytes:
        need = model.weight_memory_bytes / tensor_parallel / 1e9
        raise ValueError(f"{model.name} ({need:.1f} GB of weights per GPU) leaves no room for KV on "
                         f"{tensor_parallel} x {gpu.name}; raise tensor_parallel or quantize the weights")
    return int(free // block_bytes)
