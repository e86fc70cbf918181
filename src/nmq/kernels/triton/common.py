"""Device helpers shared by the Triton kernels: bit-stream reads and dequantization."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def read_bits(row_ptr, bitpos, row_bytes, mask, WIDTH: tl.constexpr):
    """The WIDTH-bit code at stream bit ``bitpos`` of each row (nmq.format.bitpack layout), int32.

    Widths that divide 8 never straddle a byte; 3-bit codes may, so those read
    the next byte too (masked at the row end, where a straddle cannot happen).
    """
    byte = bitpos >> 3
    if WIDTH == 8:
        return tl.load(row_ptr + byte, mask=mask, other=0).to(tl.int32)
    lo = tl.load(row_ptr + byte, mask=mask, other=0).to(tl.int32)
    if 8 % WIDTH == 0:
        word = lo
    else:
        hi = tl.load(row_ptr + byte + 1, mask=mask & (byte + 1 < row_bytes), other=0).to(tl.int32)
        word = lo | (hi << 8)
    return (word >> (bitpos & 7)) & ((1 << WIDTH) - 1)


@triton.jit
def group_zero(z_ptr, offs_o, stride_z, z_bytes, gidx, mask, BITS: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Zero code of group ``gidx`` for each output row (``2**(BITS-1)`` when symmetric)."""
    # One return: the compiler type-checks every return even behind a constexpr branch.
    if SYMMETRIC:
        zero = tl.full((1, 1), 1 << (BITS - 1), tl.int32)
    else:
        # gidx may be a scalar; broadcasting it over the rows keeps every mask a tensor.
        zero = read_bits(z_ptr + offs_o * stride_z, (offs_o * 0 + gidx) * BITS, z_bytes, mask, BITS)
    return zero


@triton.jit
def accumulate(acc, a, q, s_ptr, offs_o, o_mask, stride_s, gidx, k_idx, GROUP: tl.constexpr,
               SCALE_MODE: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """``acc += a @ dequant(q)`` for one K tile; ``q [BK, BO]`` holds ``code - zero`` (0 where not kept).

    ``offs_o``/``o_mask`` are the tile's output rows (1-D), ``k_idx`` its dense
    K columns (1-D), ``gidx`` the tile's group when it lies in one.
    SCALE_MODE 0: the tile lies in one quantization group, so the integer
    weights (exact in fp16/bf16 for codes of up to 8 bits) go to the tensor
    cores as they are and the group scale multiplies the fp32 tile product.
    1: one group per row, the scale is applied once after the K loop.
    2: groups shorter than the tile, every weight is scaled before the dot
    (and so rounded to the activation dtype).
    """
    if SCALE_MODE == 2:
        s_ptrs = s_ptr + offs_o[None, :] * stride_s + (k_idx // GROUP)[:, None]
        s = tl.load(s_ptrs, mask=o_mask[None, :], other=0.0).to(tl.float32)
        # Columns past K (q == 0 there) may read a scale past the row's last
        # group, even past the tensor: never let 0 * (Inf or NaN) in.
        w = tl.where(q == 0, 0.0, q.to(tl.float32) * s)
    else:
        w = q
    if UPCAST:
        # The interpreter multiplies bf16 bit patterns as integers in tl.dot (triton-lang/triton#11584);
        # widened to fp32 the operands are exact.
        prod = tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    elif IEEE:
        prod = tl.dot(a, w.to(tl.float32), input_precision="ieee")
    else:
        prod = tl.dot(a, w.to(a.dtype))
    if SCALE_MODE == 0:
        s = tl.load(s_ptr + offs_o * stride_s + gidx, mask=o_mask, other=0.0).to(tl.float32)
        prod = prod * s[None, :]
    return acc + prod


@triton.jit
def finish(acc, y_ptr, s_ptr, offs_t, offs_o, T, OUT, stride_yt, stride_s,
           SCALE_MODE: tl.constexpr, SPLIT_K: tl.constexpr):
    """Apply a per-row scale if any, then store (or add, when K is split) the fp32 tile."""
    o_mask = offs_o < OUT
    if SCALE_MODE == 1:
        s = tl.load(s_ptr + offs_o * stride_s, mask=o_mask, other=0.0).to(tl.float32)
        acc = acc * s[None, :]
    ptrs = y_ptr + offs_t[:, None] * stride_yt + offs_o[None, :]
    mask = (offs_t[:, None] < T) & o_mask[None, :]
    if SPLIT_K == 1:
        tl.store(ptrs, acc, mask=mask)
    else:
        tl.atomic_add(ptrs, acc, mask=mask)
