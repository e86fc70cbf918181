import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nmq.compress.quant import (
    GroupGrid,
    group_params,
    quantize_activations,
    quantize_groups,
    quantize_with,
)
from nmq.errors import QuantError
from nmq.format.spec import QuantSpec, dequantize_groups


@given(bits=st.sampled_from([2, 3, 4, 8]), symmetric=st.booleans(), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_rtn_error_is_at_most_half_a_step(bits, symmetric, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 3, 16, generator=gen) * scale
    spec = QuantSpec(bits, 16, symmetric)
    codes, scales, zeros = quantize_groups(w, spec)
    assert codes.min() >= 0 and codes.max() <= spec.max_code
    back = dequantize_groups(codes, scales, zeros, spec)
    step = scales.float().unsqueeze(-1)
    # fp16 rounding of the scale may push the extreme code against the clamp by a hair.
    assert ((back - w).abs() <= step * 0.5 + step * 2e-3 * (1 << bits) + 1e-12).all()


@given(symmetric=st.booleans(), bits=st.sampled_from([2, 3, 4, 8]))
def test_zero_stays_exactly_zero(symmetric, bits):
    w = torch.tensor([[[0.0, 1.5, -0.2, 0.0, 3.0, 0.7, 0.0, 0.1]]])
    spec = QuantSpec(bits, 8, symmetric)
    back = dequantize_groups(*quantize_groups(w, spec), spec)
    assert (back[w == 0] == 0).all()


def test_all_zero_group_and_positive_only_group():
    w = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]])
    for symmetric in (True, False):
        spec = QuantSpec(4, 4, symmetric)
        back = dequantize_groups(*quantize_groups(w, spec), spec)
        assert torch.equal(back[0, 0], torch.zeros(4))
        assert torch.allclose(back[0, 1], w[0, 1], atol=0.3)  # half a step of 4/7


def test_round_half_to_even():
    # absmax 7 -> scale exactly 1: 2.5 -> 2, 3.5 -> 4, -0.5 -> 0
    w = torch.tensor([[[7.0, 2.5, 3.5, -0.5]]])
    codes, scales, _ = quantize_groups(w, QuantSpec(4, 4, True))
    assert scales.item() == 1.0
    assert (codes - 8).tolist() == [[[7, 2, 4, 0]]]


def test_scales_are_fp16_and_overflow_is_refused():
    _, scales, _ = quantize_groups(torch.randn(2, 2, 8), QuantSpec(4, 8, True))
    assert scales.dtype == torch.float16
    with pytest.raises(QuantError, match="overflows fp16"):
        quantize_groups(torch.full((1, 1, 8), 1e6), QuantSpec(4, 8, True))


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_unsupported_bits(bits):
    with pytest.raises(QuantError, match="accepted: 2, 3, 4, 8"):
        QuantSpec(bits, 128, True)


def test_activation_quantization_is_symmetric_int8_half_even(rng):
    x = torch.randn(3, 64, generator=rng) * 5
    q, s = quantize_activations(x, 32)
    assert q.dtype == torch.int8 and s.shape == (3, 2)
    assert q.abs().max() <= 127
    g = x.reshape(3, 2, 32)
    assert torch.equal(s, g.abs().amax(-1) / 127)
    assert torch.equal(q.reshape(3, 2, 32).float(), torch.round(g / s.unsqueeze(-1)))
    # an all-zero group quantizes to zeros with scale 0
    q0, s0 = quantize_activations(torch.zeros(1, 32), 32)
    assert s0.item() == 0 and q0.abs().sum() == 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_group_grid_rounds_like_quantize_then_dequantize(symmetric):
    g = torch.Generator().manual_seed(3)
    spec = QuantSpec(4, 64, symmetric)
    w = torch.randn(40, 1, 64, generator=g)
    w[5] = 0.0  # an all-zero group: scale 0
    scales, zeros = group_params(w, spec)
    v = torch.randn(40, 1, 64, generator=g) * 1.5  # values off the group they were scaled for, as in the OBS loop
    want = dequantize_groups(quantize_with(v, scales, zeros, spec), scales, zeros, spec)
    grid = GroupGrid.of(scales[:, 0], None if zeros is None else zeros[:, 0], spec)
    got = torch.stack([grid.round(v[:, 0, j]) for j in range(64)], dim=-1)
    assert torch.equal(got, want[:, 0])
