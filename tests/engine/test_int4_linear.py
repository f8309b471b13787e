"""The W4A16 projection (engine/model/int4_linear.py) on its own: round-to-nearest's bounds, the CPU
kernel against the dequantize-then-matmul fallback and both against float64, packed parts, each
tensor-parallel rank's share, refusals at construction, and a second load after the kernel's layout."""

from __future__ import annotations

import pytest
import torch

import engine.model.int4_linear as int4_linear
from engine.model.int4_formats import pack_compressed_tensors, quantize_groups, unpack_int32
from engine.model.int4_linear import Int4Linear
from engine.model.quant_config import QuantizationError, QuantScheme

RUNTIME = QuantScheme("int4", group_size=128, symmetric=False)


@pytest.mark.parametrize("symmetric", [True, False])
def test_round_to_nearest_stays_within_half_a_step_and_keeps_scales_in_the_weights_dtype(symmetric: bool) -> None:
    torch.manual_seed(0)
    weight = (torch.randn(32, 256) * torch.logspace(-3, 1, 32)[:, None]).to(torch.bfloat16)  # rows decades apart
    values, scales, zeros = quantize_groups(weight, 64, symmetric)
    assert values.dtype == zeros.dtype == torch.uint8 and int(values.max()) <= 15 and scales.shape == (32, 4)
    assert torch.equal(scales.to(torch.bfloat16).float(), scales)  # what a bf16 checkpoint stores reads back
    step = scales.repeat_interleave(64, dim=1)
    back = (values.float() - zeros.float().repeat_interleave(64, dim=1)) * step
    assert ((back - weight.float()).abs() <= step / 2 * 1.0001).all()
    if symmetric:
        assert bool((zeros == 8).all())
    else:  # the group's range, zero included, in 15 steps: both ends reached
        grouped = values.view(32, 4, 64)
        assert bool(((grouped.amax(dim=2) == 15) | (grouped.amin(dim=2) == 0)).all())


def _layer(in_features: int, sizes: list[int], scheme: QuantScheme = RUNTIME, bias: bool = False, **tp: object) -> Int4Linear:
    layer = Int4Linear(in_features, sizes, bias, scheme, torch.float32, **tp)  # type: ignore[arg-type]
    layer.begin_loading()
    return layer


def _reference(weights: list[torch.Tensor], group: int) -> torch.Tensor:
    """float64 [out, in]: each part rounded as the module rounds it, dequantized."""
    parts = []
    for weight in weights:
        values, scales, zeros = quantize_groups(weight, group, symmetric=False)
        expand = {"dim": 1, "repeats": group}
        parts.append((values.double() - zeros.double().repeat_interleave(**expand)) * scales.double().repeat_interleave(**expand))
    return torch.cat(parts)


@pytest.mark.parametrize(("in_features", "group", "kernel_group"), [(256, 128, 128), (256, 32, 32), (384, 384, 128)])
def test_the_cpu_kernel_and_the_fallback_multiply_the_4_bit_weight(in_features: int, group: int, kernel_group: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A packed projection (two parts) against float64; per channel (a group the row) the kernel's group
    is repeated. The fallback is float32 throughout, the kernel bf16 in and out."""
    torch.manual_seed(1)
    scheme = QuantScheme("int4", group_size=None if group == in_features else group, symmetric=False)
    weights = [torch.randn(48, in_features), torch.randn(16, in_features)]
    reference = _reference(weights, group)
    outputs = {}
    for kernels in (False, True):
        monkeypatch.setattr(int4_linear, "KERNELS_ENABLED", kernels)
        layer = _layer(in_features, [48, 16], scheme, bias=True)
        assert layer.checkpoint_keys() == ["weight:0", "bias:0", "weight:1", "bias:1"]
        for part, weight in enumerate(weights):
            layer.load_part("weight", part, weight)
            layer.load_part("bias", part, torch.full((weight.shape[0],), float(part)))
        layer.finish_loading()
        assert layer.kernel == ("cpu" if kernels else None) and layer.kernel_group == (kernel_group if kernels else 0)
        if not kernels:
            torch.testing.assert_close(layer.dequantized().double(), reference, rtol=0, atol=1e-6)
        for rows in (1, 7, 33):
            x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))
            expected = x.double() @ reference.T
            expected[:, 48:] += 1
            out = layer(x)
            assert out.dtype == torch.float32 and out.shape == (rows, 64)
            outputs[kernels, rows] = out
            tolerance = 2e-2 if kernels else 1e-5  # bf16 keeps 8 bits of mantissa
            error = (out.double() - expected).abs().max() / expected.abs().max()
            assert error < tolerance, (kernels, rows, error)
        assert layer.split(out)[1].shape == (33, 16)
    assert layer(torch.randn(0, in_features)).shape == (0, 64)


def test_each_rank_keeps_its_rows_or_its_columns_and_their_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """q/k/v-like (rows split): the ranks' outputs side by side are the whole; o-like (columns split): their
    partial sums add up to it, each rank with its groups' scales; a row-split bias is added once."""
    monkeypatch.setattr(int4_linear, "KERNELS_ENABLED", False)
    torch.manual_seed(2)
    weight, bias, x = torch.randn(64, 256), torch.randn(64), torch.randn(5, 256)
    whole = _layer(256, [64], bias=True)
    whole.load_part("weight", 0, weight)
    whole.load_part("bias", 0, bias)
    whole.finish_loading()
    expected = whole(x)
    rows, columns = [], []
    for rank in (0, 1):
        by_rows = _layer(256, [32], bias=True, tp_rank=rank, tp_size=2)
        by_columns = _layer(128, [64], bias=True, tp_rank=rank, tp_size=2, split_inputs=True)
        for layer in (by_rows, by_columns):
            layer.load_part("weight", 0, weight)
            layer.load_part("bias", 0, bias)
            layer.finish_loading()
        rows.append(by_rows(x))
        columns.append(by_columns(x[:, rank * 128:(rank + 1) * 128]))
    torch.testing.assert_close(torch.cat(rows, dim=1), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(columns[0] + columns[1], expected, rtol=1e-5, atol=1e-5)


def test_shapes_and_orders_that_cannot_be_served_are_refused_when_the_model_is_built() -> None:
    with pytest.raises(QuantizationError, match="o_proj's 96 input columns are not whole groups of 64"):
        Int4Linear(96, [32], False, QuantScheme("int4", group_size=64), torch.float32, name="o_proj")
    # Two ranks take 64 columns each: a group of 128 would straddle them.
    with pytest.raises(QuantizationError, match=r"128 input columns \(2 ranks take 64 each\) are not whole groups"):
        Int4Linear(64, [32], False, RUNTIME, torch.float32, tp_rank=0, tp_size=2, split_inputs=True)
    act_order = QuantScheme("int4", source="gptq", group_size=32, act_order=True)
    with pytest.raises(QuantizationError, match="act-order .* cannot be split across tensor-parallel ranks"):
        Int4Linear(64, [32], False, act_order, torch.float32, tp_rank=1, tp_size=2, split_inputs=True)
    Int4Linear(64, [32], False, act_order, torch.float32, tp_rank=1, tp_size=2)  # rows split: every rank has all columns
    layer = _layer(128, [16], QuantScheme("int4", source="compressed-tensors", group_size=128, symmetric=False))
    with pytest.raises(ValueError, match="without weight_packed:0, weight_scale:0, weight_zero_point:0"):
        layer.finish_loading()
    with pytest.raises(ValueError, match="unexpected tensor 'qweight' for a 4-bit compressed-tensors projection"):
        layer.load_part("qweight", 0, torch.zeros(16, 16, dtype=torch.int32))


def test_a_second_load_replaces_the_kernels_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a weight update does (engine/weight_loading.py): begin_loading puts the plain layout back."""
    monkeypatch.setattr(int4_linear, "KERNELS_ENABLED", True)
    scheme = QuantScheme("int4", source="compressed-tensors", group_size=64, symmetric=False)
    layer = Int4Linear(128, [32], False, scheme, torch.float32)
    x = torch.randn(3, 128)
    outputs = []
    for seed in (0, 1):
        weight = torch.randn(32, 128, generator=torch.Generator().manual_seed(seed))
        values, scales, zeros = quantize_groups(weight, 64, symmetric=False)
        layer.begin_loading()
        assert layer.kernel is None and layer.qweight.shape == (32, 64)
        for leaf, tensor in pack_compressed_tensors(values, scales, zeros, torch.float16).items():
            layer.load_part(leaf, 0, tensor)
        layer.finish_loading()
        assert layer.kernel == "cpu" and layer.scales is None
        outputs.append(layer(x))
        dequantized = (values.float() - zeros.float().repeat_interleave(64, 1)) * scales.repeat_interleave(64, 1)
        torch.testing.assert_close(outputs[-1], x @ dequantized.T, rtol=2e-2, atol=5e-2)
    assert not torch.allclose(outputs[0], outputs[1])


def test_packing_for_compressed_tensors_reads_back() -> None:
    """The writer's int32 packing (pitstop engine quantize) against the reader, padding and sign bit included."""
    values = torch.randint(0, 16, (12, 20), dtype=torch.uint8)
    values[0, :8] = 15  # every nibble set: the int32 is negative
    tensors = pack_compressed_tensors(values, torch.ones(12, 1), values[:, :3], torch.bfloat16)
    assert tensors["weight_packed"].shape == (12, 3) and tensors["weight_packed"][0, 0].item() == -1
    assert torch.equal(unpack_int32(tensors["weight_packed"], 1)[:, :20], values)
    assert tensors["weight_zero_point"].shape == (2, 3)  # twelve rows, eight an int32 along the output
    assert torch.equal(unpack_int32(tensors["weight_zero_point"], 0)[:12], values[:, :3])
    assert tensors["weight_scale"].dtype == torch.bfloat16 and tensors["weight_shape"].tolist() == [12, 20]
