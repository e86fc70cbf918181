"""The decode step ops (nmq.backends.cpu.decode) against PyTorch, on every ISA level this CPU has.

bf16 results are rounded where PyTorch's bf16 ops round, so they match it
except where an fp32 sum's order or exp's last bits move a value across a
rounding boundary: one bf16 step, rarely.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmq.errors import BackendError

cpu = pytest.importorskip("nmq.backends.cpu.matmul")
REASON = cpu.CpuBackend().unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpu backend unavailable: {REASON}")
from nmq.backends.cpu import decode as cpu_decode

DTYPES = [torch.float32, torch.bfloat16]


def _close(got, want, dtype, frac=0.01):
    """fp32: within 1e-6 relative; bf16: at most one rounding step apart, on at most `frac` of the values."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-6 * float(want.abs().max()), rtol=1e-6)
        return
    diff = (got.float() - want.float()).abs()
    step = want.float().abs() * 2**-7 + 1e-30
    assert bool((diff <= step).all()), float((diff / step).max())
    assert float((diff > 0).float().mean()) <= frac


def _ops(dtype, *, hidden=256, heads=8, kv_heads=2, head_dim=32, inter=384, layers=2, max_len=40):
    k = torch.zeros(layers, kv_heads, max_len, head_dim, dtype=dtype)
    v = torch.zeros_like(k)
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.cat([pos * freq, pos * freq], dim=1)
    return cpu_decode.DecodeOps(hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=inter,
                               dtype=dtype, k_cache=k, v_cache=v, cos=ang.cos().to(dtype), sin=ang.sin().to(dtype),
                               scale=head_dim**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_adds_the_residual_and_normalizes_like_llama(level, rng, dtype):
    ops = _ops(dtype)
    h0 = (torch.randn(1, 256, generator=rng) * 3).to(dtype)
    add = torch.randn(1, 256, generator=rng).to(dtype)
    w = (torch.rand(256, generator=rng) + 0.5).to(dtype)
    ops.h.copy_(h0)
    out = ops.norm(add, w, 1e-5)
    h = h0 + add  # PyTorch's own op in the dtype
    assert torch.equal(ops.h, h)
    want = w * F.rms_norm(h.float(), (256,), eps=1e-5).to(dtype)
    _close(out, want, dtype)
    out2 = ops.norm(None, w, 1e-5)  # no residual: h stays
    assert torch.equal(ops.h, h) and torch.equal(out2, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_pytorch(level, rng, dtype):
    ops = _ops(dtype)
    g = (torch.randn(384, generator=rng) * 6).to(dtype)
    g[:4] = torch.tensor([0.0, -100.0, 100.0, -0.0])  # exp's clamp on both sides
    u = torch.randn(384, generator=rng).to(dtype)
    _close(ops.silu_mul(g, u).reshape(-1), F.silu(g) * u, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attend_step_rotates_stores_and_attends(level, rng, dtype):
    """Cache rows equal PyTorch's rotary in the dtype bit for bit; outputs match SDPA over the cache in fp64."""
    ops = _ops(dtype)
    heads, kv, d = 8, 2, 32
    half = d // 2

    def rope(x, p):
        cos, sin = ops.cos[p], ops.sin[p]
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    for p in range(5):
        q, k, v = (torch.randn(1, 1, n * d, generator=rng).to(dtype) for n in (heads, kv, kv))
        o = ops.attend(1, p, q, k, v)
        assert torch.equal(ops.k_cache[1, :, p], rope(k.reshape(kv, d), p))
        assert torch.equal(ops.v_cache[1, :, p], v.reshape(kv, d))
        qr = rope(q.reshape(heads, 1, d), p).double()
        want = F.scaled_dot_product_attention(qr, ops.k_cache[1, :, : p + 1].double(), ops.v_cache[1, :, : p + 1].double(),
                                              scale=d**-0.5, enable_gqa=True).reshape(1, heads * d)
        _close(o, want.to(dtype), dtype, frac=0.05)
    assert not ops.k_cache[0].any()  # the other layer's cache is untouched


def test_levels_agree_bit_for_bit(rng):
    results = []
    g = (torch.randn(1000, generator=rng) * 4).to(torch.bfloat16)
    u = torch.randn(1000, generator=rng).to(torch.bfloat16)
    try:
        for level in cpu.isa_levels():
            cpu.set_isa(level)
            ops = _ops(torch.bfloat16, inter=1000)
            ops.h.copy_(torch.randn(1, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16))
            n = ops.norm(None, torch.ones(256, dtype=torch.bfloat16), 1e-6).clone()
            q = torch.randn(1, 256, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
            kv = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
            o = ops.attend(0, 0, q, kv, kv).clone()
            results.append((n, ops.silu_mul(g, u).clone(), o))
    finally:
        cpu.set_isa(cpu.isa_levels()[0])
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


def test_bad_inputs_are_refused():
    with pytest.raises(BackendError, match="accepted: float32 or bfloat16"):
        _ops(torch.float16)
    ops = _ops(torch.float32)
    with pytest.raises(BackendError, match="expected 384 values"):
        ops.silu_mul(torch.zeros(383), torch.zeros(384))
    with pytest.raises(BackendError, match="outside the KV cache of 40"):
        ops.attend(0, 40, torch.zeros(256), torch.zeros(64), torch.zeros(64))
    with pytest.raises(BackendError, match="not a LLaMA layout"):
        _ops(torch.float32, heads=6, kv_heads=4)


def _sdpa(q, k, v, scale):
    return torch.nn.functional.scaled_dot_product_attention(
        q.double()[:, None], k.double(), v.double(), scale=scale, enable_gqa=True)[:, 0].float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(32, 32, 128), (8, 2, 64), (3, 1, 20), (4, 4, 7)])
def test_decode_attention_matches_sdpa(level, rng, dtype, heads, kv_heads, dim):
    """One position over a cache view (GQA, odd head sizes, length 1 to 300) against SDPA in fp64."""
    max_len = 301
    cache_k = torch.randn(kv_heads, max_len, dim, generator=rng).to(dtype)
    cache_v = torch.randn(kv_heads, max_len, dim, generator=rng).to(dtype)
    for length in (1, 2, 17, 300):
        q = torch.randn(heads, dim, generator=rng) * 2
        k, v = cache_k[:, :length], cache_v[:, :length]
        got = cpu_decode.decode_attention(q, k, v, dim ** -0.5)
        assert got.dtype == torch.float32 and got.shape == (heads, dim)
        torch.testing.assert_close(got, _sdpa(q, k.float(), v.float(), dim ** -0.5), atol=2e-6, rtol=1e-5)


def test_decode_attention_levels_and_threads_agree(rng):
    q = torch.randn(32, 128, generator=rng)
    k, v = torch.randn(2, 32, 90, 128, generator=rng).to(torch.bfloat16)
    outs = []
    old = cpu.get_threads()
    try:
        for level in cpu.isa_levels():
            for threads in (1, 3):
                cpu.set_isa(level)
                cpu.set_threads(threads)
                outs.append(cpu_decode.decode_attention(q, k, v, 0.1))
    finally:
        cpu.set_threads(old)
        cpu.set_isa(cpu.isa_levels()[0])
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_decode_attention_refuses_bad_input(rng):
    q, k = torch.randn(4, 16), torch.randn(2, 5, 16)
    with pytest.raises(BackendError, match="q \\[heads, dim\\]"):
        cpu_decode.decode_attention(q, k, torch.randn(2, 4, 16), 1.0)
    with pytest.raises(BackendError, match="cannot share 3"):
        cpu_decode.decode_attention(q, torch.randn(3, 5, 16), torch.randn(3, 5, 16), 1.0)
    with pytest.raises(BackendError, match="accepted: float32 or bfloat16"):
        cpu_decode.decode_attention(q, k.half(), k.half(), 1.0)
    with pytest.raises(BackendError, match="contiguous"):
        cpu_decode.decode_attention(q, k.transpose(1, 2).contiguous().transpose(1, 2), k, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_projections_are_taken_whole(rng, dtype):
    """attend(q|k|v) and silu_mul(gate|up) as one tensor each: the same as the parts."""
    a, b = _ops(dtype), _ops(dtype)
    qkv = torch.randn(1, 256 + 2 * 64, generator=rng).to(dtype)
    gu = torch.randn(1, 2 * 384, generator=rng).to(dtype)
    for p in range(3):
        whole = a.attend(0, p, qkv).clone()
        parts = b.attend(0, p, qkv[:, :256], qkv[:, 256:320], qkv[:, 320:]).clone()
        assert torch.equal(whole, parts)
    assert torch.equal(a.k_cache, b.k_cache) and torch.equal(a.v_cache, b.v_cache)
    assert torch.equal(a.silu_mul(gu), b.silu_mul(gu[:, :384], gu[:, 384:]))
    with pytest.raises(BackendError, match="expected 384 values"):
        a.attend(0, 0, qkv[:, :-1])
