"""Dense (N == M) W4A16 matmul straight from the packed codes.

Weight layout: the NMQTensor's ``values`` bytes as they are (two INT4 codes per
byte, low nibble first, ascending K), ``scales`` fp16 ``[out, groups]`` and
packed ``zeros``. A ``[BLOCK_O, BLOCK_K / 2]`` byte tile is loaded along K
(coalesced), split into low and high nibbles and interleaved back into K
order, transposed to ``[BLOCK_K, BLOCK_O]`` and fed to ``tl.dot`` as
``code - zero`` integers. 8-bit codes are loaded as they are; other widths
go through the generic bit-stream read.

Grid and split-K as in :mod:`nmq.kernels.triton.nm_int4`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import accumulate, finish, group_zero, read_bits


# NGROUPS only picks SCALE_MODE on the host: left unspecialized, shapes of any K share compiled kernels.
@triton.jit(do_not_specialize=["NGROUPS"])
def dense_int4_kernel(
    x_ptr, v_ptr, s_ptr, z_ptr, y_ptr,
    T, OUT, K, T_BUCKET, NGROUPS,
    stride_xt, stride_v, stride_s, stride_z, stride_yt,
    BITS: tl.constexpr, GROUP: tl.constexpr, SYMMETRIC: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr, SCALE_MODE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    t_mask = offs_t < T
    o_mask = offs_o < OUT
    acc = tl.zeros((BLOCK_T, BLOCK_O), dtype=tl.float32)
    for kt in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
        k_idx = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = k_idx < K
        a = tl.load(x_ptr + offs_t[:, None] * stride_xt + k_idx[None, :],
                    mask=t_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & o_mask[None, :]
        if SCALE_MODE == 2:
            gidx = (k_idx // GROUP)[:, None]
            zero = group_zero(z_ptr, offs_o[None, :], stride_z, stride_z, gidx, w_mask, BITS, SYMMETRIC)
        else:
            gidx = (kt * BLOCK_K) // GROUP
            zero = group_zero(z_ptr, offs_o[None, :], stride_z, stride_z, gidx, o_mask[None, :], BITS, SYMMETRIC)
        if BITS == 4:
            b_idx = kt * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
            b_mask = o_mask[:, None] & (b_idx[None, :] < stride_v)
            packed = tl.load(v_ptr + offs_o[:, None] * stride_v + b_idx[None, :], mask=b_mask, other=0)
            packed = packed.to(tl.int32)
            codes = tl.trans(tl.interleave(packed & 15, packed >> 4))
        elif BITS == 8:
            codes = tl.load(v_ptr + offs_o[None, :] * stride_v + k_idx[:, None], mask=w_mask, other=0)
            codes = codes.to(tl.int32)
        else:
            codes = read_bits(v_ptr + offs_o[None, :] * stride_v, k_idx[:, None] * BITS, stride_v, w_mask, BITS)
        # Columns past K meet zero activations; zeroing them keeps padding out of the sum regardless.
        q = tl.where(w_mask, codes - zero, 0)
        acc = accumulate(acc, a, q, s_ptr, offs_o, o_mask, stride_s, gidx, k_idx,
                         GROUP, SCALE_MODE, UPCAST, IEEE)
    finish(acc, y_ptr, s_ptr, offs_t, offs_o, T, OUT, stride_yt, stride_s, SCALE_MODE, SPLIT_K)
