"""rankers/lean_bert.py computes what transformers' BertModel computes (mean-pooled), on the same
fine-tunable MiniLM weights; int8 stays close to it."""

from __future__ import annotations

import torch

from rankers.lean_bert import LeanBert
from rankers.listmle import _encoder

PROMPTS = ["Name a colour.", "Write a detailed essay about the history of clouds, with sources and a summary at the end."]


def reference(encoder: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)


def nudge(encoder: torch.nn.Module) -> None:
    """Move off the package's weights, as fine-tuning does, so fusion is tested on new ones; the same nudge
    every run (unseeded, int8's agreement drew below 0.97 about once in 40 runs)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in encoder.encoder.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def test_lean_forward_matches_bert_model_in_fp32_and_int8_stays_close():
    tokenizer, encoder = _encoder(3)
    encoder.eval()
    nudge(encoder)
    lean, lean_int8 = LeanBert(encoder, int8=False), LeanBert(encoder, int8=True)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).ids
        expected = reference(encoder, ids)
        torch.testing.assert_close(lean(ids), expected, atol=2e-5, rtol=1e-4)
        assert torch.nn.functional.cosine_similarity(lean_int8(ids), expected, dim=0) > 0.97
    assert any("Quantized" in type(m).__name__ or "quantized" in type(m).__module__
               for layer in lean_int8.linears for m in layer)


def test_onnx_graph_computes_the_lean_forward_and_its_int8_stays_close():
    from rankers.onnx_bert import OnnxBert  # noqa: PLC0415

    tokenizer, encoder = _encoder(2)
    encoder.eval()
    nudge(encoder)
    weights = {k: v.numpy() for k, v in encoder.state_dict().items()}
    onnx_fp32, onnx_int8 = OnnxBert(weights, 2, int8=False), OnnxBert(weights, 2, int8=True)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).ids
        expected = reference(encoder, ids)
        torch.testing.assert_close(torch.from_numpy(onnx_fp32(ids)), expected, atol=2e-5, rtol=1e-4)
        got = torch.from_numpy(onnx_int8(ids))
        assert torch.nn.functional.cosine_similarity(got, expected, dim=0) > 0.98
    assert "MatMul" in onnx_fp32.op_types and "DynamicQuantizeMatMul" not in onnx_fp32.op_types
    assert "DynamicQuantizeMatMul" in onnx_int8.op_types


def test_the_package_word_table_is_a_read_only_map_of_its_safetensors_tensor():
    import numpy as np  # noqa: PLC0415
    from safetensors import safe_open  # noqa: PLC0415

    from rankers.onnx_bert import WORD_TABLE, package_word_table  # noqa: PLC0415
    from routers.tokens import minilm_dir  # noqa: PLC0415

    mapped = package_word_table()
    with safe_open(str(minilm_dir() / "model.safetensors"), framework="np") as weights:
        expected = weights.get_tensor(WORD_TABLE)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert mapped.dtype == np.float32 and mapped.shape == expected.shape
    np.testing.assert_array_equal(mapped, expected)
