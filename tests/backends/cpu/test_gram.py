"""bf16 Gram kernel (nmq.backends.cpu.gram) and the calibration Hessian built on it, at every ISA level."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmq.calibration.hessian import gram
from nmq.errors import BackendError

cpu = pytest.importorskip("nmq.backends.cpu.matmul")
REASON = cpu.CpuBackend().unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpu backend unavailable: {REASON}")
from nmq.backends.cpu import gram as cpu_gram


def _upper_error(h: torch.Tensor, x: torch.Tensor) -> float:
    ref = x.double().T @ x.double()
    return float((torch.triu(h).double() - torch.triu(ref)).abs().max() / ref.abs().max())


def _activations(tokens: int, k: int, seed: int) -> torch.Tensor:
    """bf16 activations whose channels differ in scale by up to ~50x, with a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g) * torch.exp(torch.randn(k, generator=g))
    x[:, torch.randint(0, k, (max(1, k // 64),), generator=g)] *= 20
    return x.bfloat16()


@pytest.mark.parametrize("tokens,k", [(1, 16), (7, 100), (513, 48), (600, 143), (1030, 300)])
def test_kernel_is_x_transpose_x_on_and_above_the_diagonal(tokens, k):
    if not cpu_gram.gram_bf16_available():
        pytest.skip("this CPU has no AVX-512 BF16")
    x = _activations(tokens, k, seed=tokens + k)
    h = torch.zeros(cpu_gram.padded_features(k), cpu_gram.padded_features(k))
    cpu_gram.add_gram_bf16(h, x)
    assert _upper_error(h[:k, :k], x) < 1e-5
    assert not h[:k, k:].any() and not h[k:, :].any()  # padding stays zero
    cpu_gram.add_gram_bf16(h, x)  # accumulates
    assert _upper_error(h[:k, :k] / 2, x) < 1e-5


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 700), k=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_kernel_property(tokens, k, seed):
    if not cpu_gram.gram_bf16_available():
        return
    x = _activations(tokens, k, seed)
    h = torch.zeros(cpu_gram.padded_features(k), cpu_gram.padded_features(k))
    cpu_gram.add_gram_bf16(h, x)
    assert _upper_error(h[:k, :k], x) < 1e-5


def test_calibration_hessian_at_every_level(level):
    """bf16 chunks use the kernel where the level has it, fp32 GEMMs elsewhere; fp32 chunks always the GEMMs."""
    chunks = [_activations(300, 150, seed=s) for s in range(3)]
    x = torch.cat(chunks)
    h = gram(iter(chunks), 150, block=64)
    assert torch.equal(h, h.T) and _upper_error(h, x) < 1e-5
    mixed = gram(iter([chunks[0], chunks[1].float(), chunks[2]]), 150, block=64)
    assert torch.equal(mixed, mixed.T) and _upper_error(mixed, x) < 1e-5
    if level != "avx512":
        assert not cpu_gram.gram_bf16_available()


def test_bad_inputs_get_one_clear_error(level):
    if not cpu_gram.gram_bf16_available():
        with pytest.raises(BackendError, match="AVX-512 BF16"):
            cpu_gram.add_gram_bf16(torch.zeros(16, 16), torch.zeros(4, 16, dtype=torch.bfloat16))
        return
    with pytest.raises(BackendError, match=r"bf16 x \[tokens, k\]"):
        cpu_gram.add_gram_bf16(torch.zeros(16, 16), torch.zeros(4, 16))
    with pytest.raises(BackendError, match=r"contiguous fp32 \[32, 32\]"):
        cpu_gram.add_gram_bf16(torch.zeros(16, 16), torch.zeros(4, 17, dtype=torch.bfloat16))
