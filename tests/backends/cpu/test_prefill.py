"""The cpu backend with many tokens (prefill): the 2:4 tile kernel and dequantize + one dense GEMM.

Both against the reference on fresh random inputs, on every ISA level this CPU
has; the dequantized weight is the reference's bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nmq

cpu = pytest.importorskip("nmq.backends.cpu.matmul")
REASON = cpu.CpuBackend().unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpu backend unavailable: {REASON}")

W16_TOL = 1e-4
# Tokens around the 2:4 tile kernel's threshold (64) and its tile (32): whole tiles, a ragged last one.
PREFILL_TOKENS = (64, 65, 97, 130)


def _weight(out, k, pattern, bits, group, symmetric, gen):
    return nmq.compress_weight(torch.randn(out, k, generator=gen), pattern=pattern, bits=bits, group_size=group,
                               symmetric=symmetric)


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm().clamp_min(1e-30))


@pytest.mark.parametrize("group", [32, 64, 128, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_2of4_with_many_tokens_matches_the_reference(level, rng, group, symmetric):
    """Rows that are not whole blocks, K padded to the group, fp32 and bf16 activations, bf16 outputs."""
    backend = cpu.CpuBackend()
    for out, k in ((37, 200), (100, 640), (16, 64)):
        if group != -1 and group > k:
            continue
        t = _weight(out, k, "2:4", 4, group, symmetric, rng)
        packed = backend.prepack(t)
        assert packed.fast
        run = backend.bind(packed, "w4a16")
        dense = t.to_dense()
        for tokens in PREFILL_TOKENS:
            x = torch.randn(tokens, k, generator=rng) * 3
            x[1] = 0
            want = x @ dense.T
            assert _error(backend.matmul(x, packed, "w4a16"), want) <= W16_TOL, (out, k, tokens)
            assert _error(run(x), want) <= W16_TOL, (out, k, tokens)
            xb = x.bfloat16()
            yb = run(xb)  # bf16 in, bf16 out: the fp32 result rounded once
            assert yb.dtype == torch.bfloat16
            assert _error(yb, xb.float() @ dense.T) <= 1e-2, (out, k, tokens)


FORMATS = [("2:4", 4), ("4:8", 4), ("1:4", 4), ("4:4", 4), ("3:8", 4), ("2:4", 8), ("5:16", 3), ("1:1", 2)]


@pytest.mark.parametrize("pattern,bits", FORMATS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_gemm_path_matches_the_reference(level, rng, monkeypatch, pattern, bits, symmetric):
    """Calls from GEMM_TOKENS tokens on dequantize the weight and run one GEMM: every layout, both paths'
    callers (matmul and bind), fp32 and bf16 activations."""
    monkeypatch.setattr(cpu, "GEMM_TOKENS", 5)
    backend = cpu.CpuBackend()
    t = _weight(45, 336, pattern, bits, 48 if pattern != "5:16" else 64, symmetric, rng)
    packed = backend.prepack(t)
    dense = t.to_dense()
    assert torch.equal(cpu.dequantize(packed), dense)
    run = backend.bind(packed, "w4a16")
    for tokens in (5, 23):
        x = torch.randn(tokens, 336, generator=rng)
        want = x @ dense.T
        assert _error(backend.matmul(x, packed, "w4a16"), want) <= 1e-6
        assert _error(run(x), want) <= 1e-6
        assert _error(run(x.bfloat16()), x.bfloat16().float() @ dense.T) <= 1e-2
    # W4A8 keeps its exact integer kernels whatever the token count
    assert torch.equal(backend.matmul(x, packed, "w4a8"), cpu.CpuBackend().matmul(x, packed, "w4a8"))


def test_default_threshold_routes_a_large_call_to_the_gemm(rng):
    backend = cpu.CpuBackend()
    t = _weight(24, 96, "2:4", 4, 32, False, rng)
    packed = backend.prepack(t)
    x = torch.randn(cpu.GEMM_TOKENS + 3, 96, generator=rng)
    y = backend.bind(packed, "w4a16")(x)
    assert _error(y, x @ t.to_dense().T) <= 1e-6


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.sampled_from([(n, m) for m in (1, 2, 4, 8, 16) for n in range(1, m + 1)]),
    bits=st.sampled_from([2, 3, 4, 8]),
    group_mult=st.sampled_from([1, 2, 8, -1]),
    symmetric=st.booleans(),
    out=st.integers(1, 40),
    k=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
)
def test_dequantize_is_the_reference_bit_for_bit(pattern, bits, group_mult, symmetric, out, k, seed):
    gen = torch.Generator().manual_seed(seed)
    group = -1 if group_mult == -1 else pattern[1] * group_mult
    t = _weight(out, k, f"{pattern[0]}:{pattern[1]}", bits, group, symmetric, gen)
    for lv in cpu.isa_levels():
        cpu.set_isa(lv)
        try:
            assert torch.equal(cpu.dequantize(cpu.CpuBackend().prepack(t)), t.to_dense()), lv
        finally:
            cpu.set_isa(cpu.isa_levels()[0])


@pytest.mark.parametrize("pattern", ["2:4", "3:8"])
def test_large_weights_dequantize_on_the_pool_to_the_same_values(level, rng, pattern):
    """From 4M weights dequantize runs on the kernels' threads (fast and canonical layouts alike)."""
    t = _weight(2048, 2112, pattern, 4, 64, False, rng)
    packed = cpu.CpuBackend().prepack(t)
    assert packed.out_features * packed.k_stride >= 1 << 22
    assert torch.equal(cpu.dequantize(packed), t.to_dense())
