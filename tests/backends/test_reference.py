import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nmq
from nmq.backends import get_backend
from nmq.backends.reference import partial_sums, w4a8_matmul
from nmq.errors import BackendError
from tests import spec_decoder
from tests.format.test_tensor import configs, make


@given(cfg=configs(max_out=5, max_k=70), tokens=st.integers(1, 4))
def test_float_path_matches_x_times_dequantized_weight(cfg, tokens):
    _, t = make(cfg)
    x = torch.randn(tokens, t.in_features, generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    w = torch.tensor(spec_decoder.decode(t), dtype=torch.float64)
    expected = x.double() @ w.T
    y = nmq.matmul(x, t, backend="reference", path="w4a16")
    assert y.dtype == torch.float32
    # fp32 accumulation: relative to the magnitudes summed, so cancellation cannot hide an error
    scale = x.double().abs() @ w.abs().T
    assert float((y.double() - expected).norm()) <= 1e-6 * float(scale.norm()) + 1e-30


def brute_force_partials(x, t):
    """Per DESIGN.md section 3, with numpy and Python integers only."""
    tokens = x.shape[0]
    kp, g = t.padded_in, t.group
    xp = np.zeros((tokens, kp), np.float32)
    xp[:, : t.in_features] = x.numpy()
    dense_codes = np.zeros((t.out_features, kp), np.int64)
    kept = t.kept_per_row
    n, m = t.pattern.n, t.pattern.m
    zeros = t.zero_codes().numpy()
    for r in range(t.out_features):
        codes = spec_decoder.read_codes(t.values[r].tolist(), t.bits, kept)
        cols = t.positions()[r].tolist()
        for c, col in zip(codes, cols):
            dense_codes[r, col] = c - zeros[r, col // g]
    P = np.zeros((tokens, t.out_features, t.groups), np.int64)
    S = np.zeros((tokens, t.groups), np.float32)
    for tok in range(tokens):
        for gi in range(t.groups):
            seg = xp[tok, gi * g : (gi + 1) * g]
            scale = np.float32(np.abs(seg).max()) / np.float32(127)
            q = np.zeros(g, np.int64) if scale == 0 else np.clip(np.rint(seg / scale), -127, 127).astype(np.int64)
            S[tok, gi] = scale
            for r in range(t.out_features):
                P[tok, r, gi] = int(np.dot(dense_codes[r, gi * g : (gi + 1) * g], q))
    return P, S


@given(cfg=configs(max_out=4, max_k=64), tokens=st.integers(1, 3))
def test_w4a8_partial_sums_are_exact(cfg, tokens):
    _, t = make(cfg)
    x = torch.randn(tokens, t.in_features, generator=torch.Generator().manual_seed(cfg["seed"] + 2)) * 3
    P, S = partial_sums(x, t)
    P_ref, S_ref = brute_force_partials(x, t)
    assert P.dtype == torch.int32
    assert np.array_equal(P.numpy(), P_ref)
    assert np.array_equal(S.numpy(), S_ref)
    # the float result sums s_w * s_x * P over ascending groups in fp32
    y = w4a8_matmul(x, t)
    acc = np.zeros((tokens, t.out_features), np.float32)
    sw = t.scales.float().numpy()
    for gi in range(t.groups):
        acc += (sw[None, :, gi] * S_ref[:, None, gi]) * P_ref[:, :, gi].astype(np.float32)
    assert np.array_equal(y.numpy(), acc)


def test_w4a8_is_close_to_the_float_path(rng):
    t = nmq.compress_weight(torch.randn(64, 512, generator=rng), pattern="2:4", group_size=128)
    x = torch.randn(5, 512, generator=rng)
    y16 = nmq.matmul(x, t, backend="reference", path="w4a16")
    y8 = nmq.matmul(x, t, backend="reference", path="w4a8")
    assert float((y8 - y16).norm() / y16.norm()) < 0.02


def test_leading_dimensions_and_errors(rng):
    t = nmq.compress_weight(torch.randn(16, 64, generator=rng), group_size=64)
    x = torch.randn(2, 3, 64, generator=rng)
    assert nmq.matmul(x, t, backend="reference").shape == (2, 3, 16)
    with pytest.raises(BackendError, match="63 features; the weight \\[16, 64\\] expects 64"):
        nmq.matmul(torch.randn(2, 63), t, backend="reference")
    with pytest.raises(BackendError, match="dtype torch.int64"):
        nmq.matmul(torch.ones(2, 64, dtype=torch.int64), t, backend="reference")
    with pytest.raises(BackendError, match="path 'w3a3' is unknown"):
        nmq.matmul(torch.randn(2, 64), t, path="w3a3")
    with pytest.raises(BackendError, match="backend 'tpu' is unknown"):
        nmq.matmul(torch.randn(2, 64), t, backend="tpu")
    with pytest.raises(BackendError, match="not available"):
        get_backend("cusparselt")


def test_auto_picks_an_available_cpu_backend():
    b = get_backend("auto", "cpu", 1)
    assert b.name in nmq.available_backends() and b.device == "cpu"
