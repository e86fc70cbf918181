"""Dense fp32 GEMMs through oneDNN (nmq.backends.cpu.gemm): IEEE fp32 results, the same layers, the fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import nmq
from nmq.backends.cpu import gemm
from nmq.backends.cpu import matmul as cpu


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 70), k=st.integers(1, 300), out=st.integers(1, 90), bias=st.booleans(),
       strided=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_linear_is_an_fp32_gemm(rows, k, out, bias, strided, seed):
    """Within fp32 rounding of the float64 product (a bf16 or tf32 GEMM would miss by 1e-3 and more), for
    contiguous and strided operands."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k + 3 * strided, generator=g)[:, :k]
    w = torch.randn(out, k + 5 * strided, generator=g)[:, :k]
    b = torch.randn(out, generator=g) if bias else None
    want = x.double() @ w.double().T + (0 if b is None else b.double())
    y = gemm.linear(x, w, b)
    assert y.dtype == torch.float32 and y.shape == (rows, out)
    assert _rel(y, want) <= 1e-6


def test_linear_keeps_leading_dimensions(rng):
    x, w = torch.randn(2, 3, 40, generator=rng), torch.randn(7, 40, generator=rng)
    assert gemm.linear(x, w).shape == (2, 3, 7)
    assert _rel(gemm.linear(x, w), x.double() @ w.double().T) <= 1e-6


@pytest.mark.skipif(not gemm.onednn_available(), reason="this PyTorch build has no oneDNN")
def test_fp32_linears_route_a_models_layers_through_onednn(rng):
    layer = torch.nn.Linear(96, 33)
    x = torch.randn(17, 96, generator=rng)
    with torch.no_grad():
        plain = layer(x)
        with gemm.fp32_linears():
            routed = layer(x)
    assert torch.equal(routed, gemm.linear(x, layer.weight.detach(), layer.bias.detach()))
    assert _rel(routed, x.double() @ layer.weight.double().T + layer.bias.double()) <= 1e-6
    assert _rel(routed, plain) <= 1e-6


def test_fp32_linears_leave_autograd_and_other_dtypes_to_pytorch(rng):
    layer = torch.nn.Linear(64, 16)
    x = torch.randn(9, 64, generator=rng)
    with gemm.fp32_linears():
        y = layer(x)  # recorded by autograd: oneDNN's op has no backward
        assert y.grad_fn is not None
        y.sum().backward()
        with torch.no_grad():
            xb, wb = x.bfloat16(), layer.weight.detach().bfloat16()
            yb = F.linear(xb, wb)
    assert layer.weight.grad is not None
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    assert torch.equal(yb, F.linear(xb, wb))


def test_gemm_path_on_padded_rows_ignores_stale_workspace(rng, monkeypatch):
    """The GEMM runs over the weight's padded rows: dequantize writes all of each row (finite padding codes,
    nonzero for asymmetric per-row groups), whatever the workspace held before (NaNs here)."""
    reason = cpu.CpuBackend().unavailable_reason()
    if reason is not None:
        pytest.skip(f"cpu backend unavailable: {reason}")
    monkeypatch.setattr(cpu, "GEMM_TOKENS", 4)
    backend = cpu.CpuBackend()
    for k, group, symmetric in ((200, 128, True), (202, -1, False), (200, 128, False)):
        for pattern in ("2:4", "3:8"):
            t = nmq.compress_weight(torch.randn(21, k, generator=rng), pattern=pattern, group_size=group,
                                    symmetric=symmetric)
            packed = backend.prepack(t)
            assert packed.k_stride > packed.in_features  # the case under test: rows longer than K
            cpu._workspace.take(packed.out_features * packed.k_stride).fill_(float("nan"))
            x = torch.randn(6, k, generator=rng)
            y = backend.bind(packed, "w4a16")(x)
            assert _rel(y, x.double() @ t.to_dense().double().T) <= 1e-6, (k, group, symmetric, pattern)
