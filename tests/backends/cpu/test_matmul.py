"""The cpu backend (C++ kernels) against the reference, on every ISA level this CPU has.

W4A8 partial sums must be bit-identical to the reference's; W4A8 outputs
agree within 1e-6 relative; W4A16 outputs within 1e-4 relative Frobenius
error (the contract allows 1e-3).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nmq
from nmq.backends import get_backend
from nmq.backends import reference as ref
from nmq.backends.cpu import layout
from nmq.errors import BackendError

cpu = pytest.importorskip("nmq.backends.cpu.matmul")
REASON = cpu.CpuBackend().unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpu backend unavailable: {REASON}")

PATTERNS = [(1, 4), (2, 4), (4, 8), (2, 8), (3, 8), (4, 4), (8, 8), (1, 1), (3, 4), (5, 16), (7, 16)]
GROUPS = (32, 64, 128, 256, -1)
W16_TOL = 1e-4


def _levels() -> list[str]:
    return cpu.isa_levels() if REASON is None else []


@pytest.fixture
def backend():
    return cpu.CpuBackend()


def _weight(out, k, pattern, bits, group, symmetric, gen, metadata="rank"):
    w = torch.randn(out, k, generator=gen)
    return nmq.compress_weight(w, pattern=f"{pattern[0]}:{pattern[1]}", bits=bits, group_size=group,
                               symmetric=symmetric, metadata=metadata)


def _acts(tokens, k, gen):
    x = torch.randn(tokens, k, generator=gen) * 3
    if tokens >= 3:
        x[1] = 0  # a token whose every group quantizes with scale 0
        x[2, : k // 2] *= 1e-3  # groups of very different ranges
    return x


def _check(backend, t, x, where=""):
    """Everything the contract promises for one weight and one activation batch."""
    packed = backend.prepack(t)
    p_ref, _ = ref.partial_sums(x, t)
    p = cpu.partial_sums(x, packed)
    assert p.dtype == torch.int32 and p.shape == p_ref.shape, where
    assert torch.equal(p, p_ref), f"W4A8 partial sums differ {where}: {int((p != p_ref).sum())} of {p.numel()}"
    y8, y8_ref = backend.matmul(x, packed, "w4a8"), ref.w4a8_matmul(x, t)
    scale = float(y8_ref.abs().max()) or 1.0
    assert float((y8 - y8_ref).abs().max()) <= 1e-6 * scale, f"W4A8 outputs differ {where}"
    y16, y16_ref = backend.matmul(x, packed, "w4a16"), x @ t.to_dense().T
    err = float((y16 - y16_ref).norm() / y16_ref.norm().clamp_min(1e-30))
    assert err <= W16_TOL, f"W4A16 relative error {err:.2e} {where}"
    return packed


def _cases():
    for pattern in PATTERNS:
        m = pattern[1]
        for bits in (4, 8):
            for group in GROUPS:
                if group != -1 and group % m:
                    continue
                for symmetric in (True, False):
                    yield pattern, bits, group, symmetric


def test_every_pattern_width_group_and_zero_point(level, backend, rng):
    """The full grid: patterns x widths x group sizes x symmetric/asymmetric, odd K and odd batches."""
    batches = (1, 3, 17)
    fast = 0
    for i, (pattern, bits, group, symmetric) in enumerate(_cases()):
        unit = pattern[1] if group == -1 else group
        k = 2 * unit + (unit // 2 + 3 if group == -1 else 5)  # not a multiple of the group: K is padded
        t = _weight(37, k, pattern, bits, group, symmetric, rng)
        x = _acts(batches[i % 3], k, rng)
        packed = _check(backend, t, x, f"[{level} {pattern} bits={bits} group={group} sym={symmetric}]")
        fast += packed.fast
    assert fast >= 30  # the grid does reach the fast layouts


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4), (4, 4)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fast_layouts_larger(level, backend, rng, pattern, symmetric):
    """Several row blocks and groups, batch sizes that use every token tile (8 + 8 + 1, 4 + 2 + 1)."""
    t = _weight(100, 640, pattern, 4, 64, symmetric, rng)
    packed = backend.prepack(t)
    assert packed.fast
    for tokens in (1, 7, 17):
        _check(backend, t, _acts(tokens, 640, rng), f"[{level} {pattern} tokens={tokens}]")


def test_index_metadata(level, backend, rng):
    for pattern in [(2, 4), (4, 8), (2, 8), (3, 16)]:
        t = _weight(21, 96, pattern, 4, 32, True, rng, metadata="index")
        _check(backend, t, _acts(3, 96, rng), f"[{level} {pattern} index]")


def test_levels_agree_bit_for_bit(backend, rng, monkeypatch):
    """All ISA levels give the same W4A8 outputs, not only the same partial sums."""
    levels = _levels()
    if len(levels) < 2:
        pytest.skip("only one ISA level on this CPU")
    for pattern in [(2, 4), (4, 8), (1, 4), (8, 8), (3, 8)]:
        t = _weight(45, 384, pattern, 4, 128, False, rng)
        packed = backend.prepack(t)
        x = _acts(5, 384, rng)
        outs = []
        for lv in levels:
            monkeypatch.setenv(cpu.ISA_ENV, lv)
            outs.append(backend.matmul(x, packed, "w4a8"))
        monkeypatch.delenv(cpu.ISA_ENV)
        for lv, y in zip(levels[1:], outs[1:]):
            assert torch.equal(y, outs[0]), f"{lv} differs from {levels[0]} on {pattern}"


@given(
    pattern=st.sampled_from([(n, m) for m in range(1, 17) for n in range(1, m + 1)]),
    bits=st.sampled_from([2, 3, 4, 8]),
    group_mult=st.sampled_from([1, 2, 3, 8, -1]),
    symmetric=st.booleans(),
    out=st.integers(1, 40),
    k=st.integers(1, 300),
    tokens=st.integers(1, 20),
    level_index=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_weights_match_reference(pattern, bits, group_mult, symmetric, out, k, tokens, level_index, seed):
    """Any N:M (M <= 16), any width, any group: fresh random inputs against the reference."""
    levels = _levels()
    gen = torch.Generator().manual_seed(seed)
    group = -1 if group_mult == -1 else pattern[1] * group_mult
    t = _weight(out, k, pattern, bits, group, symmetric, gen)
    old = os.environ.get(cpu.ISA_ENV)
    os.environ[cpu.ISA_ENV] = levels[level_index % len(levels)]
    try:
        _check(cpu.CpuBackend(), t, _acts(tokens, k, gen), f"[{pattern} bits={bits} group={group}]")
    finally:
        if old is None:
            del os.environ[cpu.ISA_ENV]
        else:
            os.environ[cpu.ISA_ENV] = old


def test_bf16_and_fp16_activations(backend, rng):
    t = _weight(33, 256, (2, 4), 4, 128, True, rng)
    packed = backend.prepack(t)
    x = _acts(4, 256, rng)
    for dtype in (torch.bfloat16, torch.float16):
        xd = x.to(dtype)
        want = xd.float() @ t.to_dense().T
        got = backend.matmul(xd, packed, "w4a16")
        assert float((got - want).norm() / want.norm()) <= W16_TOL
        p_ref, _ = ref.partial_sums(xd.float(), t)
        assert torch.equal(cpu.partial_sums(xd, packed), p_ref)


@pytest.mark.parametrize("group", [32, 128, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_bf16_activations_on_every_level(level, backend, rng, group, symmetric):
    # On CPUs with AVX512_BF16, 2:4 with bf16 activations runs on bf16 dot
    # products (the activations are exact, products exact, sums fp32).
    for out, k in ((48, 512), (21, 200)):
        if group != -1 and k % group:
            continue
        for pattern in ((2, 4), (4, 4)):
            t = _weight(out, k, pattern, 4, group, symmetric, rng)
            packed = backend.prepack(t)
            for tokens in (1, 3, 13):
                x = _acts(tokens, k, rng).to(torch.bfloat16)
                want = x.float() @ t.to_dense().T
                got = backend.matmul(x, packed, "w4a16")
                err = float((got - want).norm() / want.norm())
                assert err <= W16_TOL, f"{pattern} {out}x{k} tokens {tokens}: relative error {err:.2e}"


def test_non_contiguous_and_misaligned_inputs(backend, rng):
    t = _weight(40, 200, (2, 4), 4, 64, False, rng)
    packed = backend.prepack(t)
    base = _acts(6, 200, rng)
    want8, want16 = backend.matmul(base, packed, "w4a8"), backend.matmul(base, packed, "w4a16")
    wide = torch.zeros(6, 400)
    wide[:, ::2] = base
    column_major = base.T.contiguous().T
    storage = torch.zeros(6 * 200 + 1)
    misaligned = storage[1:].view(6, 200)
    misaligned.copy_(base)
    for x in (wide[:, ::2], column_major, misaligned):
        assert torch.equal(backend.matmul(x, packed, "w4a8"), want8)
        assert torch.equal(backend.matmul(x, packed, "w4a16"), want16)


def test_wrong_inputs_give_clear_errors(backend, rng):
    t = _weight(16, 128, (2, 4), 4, 64, True, rng)
    packed = backend.prepack(t)
    with pytest.raises(BackendError, match="129 features.*expects 128"):
        backend.matmul(torch.randn(2, 129), packed)
    with pytest.raises(BackendError, match="shape"):
        backend.matmul(torch.randn(128), packed)
    with pytest.raises(BackendError, match="dtype"):
        backend.matmul(torch.ones(2, 128, dtype=torch.int32), packed)
    with pytest.raises(BackendError, match="numeric path"):
        backend.matmul(torch.randn(2, 128), packed, "w2a2")
    with pytest.raises(BackendError, match="prepack"):
        backend.matmul(torch.randn(2, 128), t)
    with pytest.raises(BackendError, match="not available"):
        cpu.set_isa("sse9")
    with pytest.raises(BackendError, match="thread count"):
        cpu.set_threads(0)


def test_empty_batch(backend, rng):
    t = _weight(16, 64, (2, 4), 4, 32, True, rng)
    y = backend.matmul(torch.randn(0, 64), backend.prepack(t), "w4a8")
    assert y.shape == (0, 16)


def test_thread_counts_agree(backend, rng):
    t = _weight(300, 512, (2, 4), 4, 128, True, rng)
    packed = backend.prepack(t)
    x = _acts(9, 512, rng)
    before = cpu.get_threads()
    try:
        outs = []
        for n in (1, 3):
            cpu.set_threads(n)
            assert cpu.get_threads() == n
            outs.append((backend.matmul(x, packed, "w4a8"), backend.matmul(x, packed, "w4a16")))
    finally:
        cpu.set_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "dense", "2:8"])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_prepacked_memory_within_ten_percent(backend, rng, pattern, group, symmetric):
    t = nmq.compress_weight(torch.randn(256, 1024, generator=rng), pattern=pattern, group_size=group,
                            symmetric=symmetric)
    packed = backend.prepack(t)
    assert packed.nbytes <= 1.1 * t.nbytes, f"{packed.nbytes} bytes for {t.nbytes} compressed"


def test_auto_and_public_matmul_use_cpu(rng):
    assert get_backend("auto", "cpu", 1).name == "cpu"
    t = _weight(24, 128, (2, 4), 4, 64, True, rng)
    x = torch.randn(2, 3, 128, generator=rng)
    y = nmq.matmul(x, t, backend="cpu", path="w4a8")
    assert y.shape == (2, 3, 24)
    assert torch.equal(y.reshape(6, 24), ref.w4a8_matmul(x.reshape(6, 128), t))


def test_nmqlinear_runs_on_cpu_backend(rng):
    dense = torch.nn.Linear(128, 48)
    layer = nmq.NMQLinear.from_linear(dense, backend="cpu", pattern="2:4", group_size=64)
    x = torch.randn(5, 128, generator=rng)
    want = x @ layer.nmq_weight.to_dense().T + dense.bias
    with torch.no_grad():
        assert float((layer(x) - want).norm() / want.norm()) <= W16_TOL


def test_env_var_forces_level_in_a_fresh_process():
    code = "import nmq.backends.cpu.matmul as c; print(c.get_isa())"
    env = dict(os.environ, NMQ_CPU_ISA="portable", NMQ_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "portable"
    env["NMQ_CPU_ISA"] = "nonsense"
    code = "import nmq.backends.cpu.matmul as c; print(c.CpuBackend().unavailable_reason())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "NMQ_CPU_ISA=nonsense is not available" in out.stdout


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4), (4, 4)])
def test_fast_layouts_built_in_row_chunks(backend, rng, monkeypatch, pattern):
    t = _weight(100, 256, pattern, 4, 64, False, rng)
    whole = backend.prepack(t)
    monkeypatch.setattr(layout, "PACK_CHUNK_ROWS", 32)
    chunked = backend.prepack(t)
    assert chunked.fast and all(torch.equal(a, b) for a, b in zip(whole.buffers, chunked.buffers))
    _check(backend, t, _acts(5, 256, rng))


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4), (4, 4)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_stacked_rows_run_as_the_parts(backend, rng, pattern, symmetric):
    """stack_rows: the stacked weight's outputs are the parts' outputs side by side, and the parts (now views
    into it) still give the reference's results; big enough for huge-page memory."""
    k = 1024
    parts = [_weight(out, k, pattern, 4, 128, symmetric, rng) for out in (512, 16, 37)]
    whole, views = backend.stack_rows([backend.prepack(t) for t in parts])
    assert whole.shape == (565, k) and [v.shape for v in views] == [t.shape for t in parts]
    x = _acts(3, k, rng)
    for path in ("w4a8", "w4a16"):
        y = backend.matmul(x, whole, path)
        assert torch.equal(y, torch.cat([backend.matmul(x, v, path) for v in views], dim=1)), path
    for t, v in zip(parts, views):
        assert v.buffers[0].data_ptr() >= whole.buffers[0].data_ptr()  # a view, not a copy
        _check(backend, t, x)  # the parts themselves still match the reference
        assert torch.equal(cpu.partial_sums(x, v), ref.partial_sums(x, t)[0])


def test_rows_that_cannot_be_stacked(backend, rng):
    a = backend.prepack(_weight(37, 256, (2, 4), 4, 128, True, rng))
    b = backend.prepack(_weight(32, 256, (2, 4), 4, 128, True, rng))
    assert backend.stack_rows([a, b]) is None  # the first part ends inside a row block
    assert backend.stack_rows([b, backend.prepack(_weight(32, 256, (4, 8), 4, 128, True, rng))]) is None
    assert backend.stack_rows([b, backend.prepack(_weight(32, 256, (2, 4), 4, 64, True, rng))]) is None
    assert backend.stack_rows([b, backend.prepack(_weight(32, 256, (3, 8), 4, 128, True, rng))]) is None  # generic
    assert backend.stack_rows([b]) is None

