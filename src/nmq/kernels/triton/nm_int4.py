"""N:M sparse W4A16 matmul (any N:M with M <= 16) straight from the kept codes.

Weight layout (built by :func:`nmq.kernels.triton.launch.pack_weight`): the
NMQTensor's own ``values`` bytes (kept codes, ascending K, little end first),
its metadata re-encoded as ``index`` (``ceil(log2 M)`` bits per kept weight,
ascending within each M-group), ``scales`` fp16 ``[out, groups]`` and packed
``zeros``. Nothing is expanded in memory; each ``[BLOCK_K, BLOCK_O]`` tile of
``code - zero`` integers is rebuilt in registers and goes to ``tl.dot``
against the activation tile. Two ways to rebuild it:

* ``VECTOR`` (N and M powers of two: 2:4, 4:8, 1:4, 8:16, ...): the tile's
  kept codes and positions are read once as ``[BLOCK_O, BLOCK_K / M * N]``,
  reshaped to ``[BLOCK_O, groups, N]`` and compared with ``0..M-1`` to give
  ``[BLOCK_O, groups, M]``, i.e. the dense tile; N selects per weight.
* otherwise (3:6, 5:16, ...): for dense column ``k`` of row ``o`` the
  kernel reads the N (position, code) pairs of M-group ``k // M`` and keeps
  the code whose position is ``k % M`` (the repeated reads hit the cache).

Grid: (output tiles, token tiles, SPLIT_K). With SPLIT_K > 1 each program
takes every SPLIT_K-th K tile and adds its partial product into ``y`` with an
atomic add, so a batch of 1..16 still fills the GPU (``y`` starts at zero).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import accumulate, finish, group_zero, read_bits


# NGROUPS only picks SCALE_MODE on the host: left unspecialized, shapes of any K share compiled kernels.
@triton.jit(do_not_specialize=["NGROUPS"])
def nm_int4_kernel(
    x_ptr, v_ptr, meta_ptr, s_ptr, z_ptr, y_ptr,
    T, OUT, K, K_PAD, T_BUCKET, NGROUPS,
    stride_xt, stride_v, stride_meta, stride_s, stride_z, stride_yt,
    N: tl.constexpr, M: tl.constexpr, BITS: tl.constexpr, IDX_BITS: tl.constexpr,
    GROUP: tl.constexpr, SYMMETRIC: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr, SCALE_MODE: tl.constexpr, VECTOR: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # Row strides of the byte fields are also their row lengths: the fields are contiguous.
    pid_o = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    t_mask = offs_t < T
    o_mask = offs_o < OUT
    v_rows = v_ptr + offs_o[None, :] * stride_v
    meta_rows = meta_ptr + offs_o[None, :] * stride_meta
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
        if VECTOR:
            # Each kept (position, code) pair is read once, as a [BLOCK_O, kept] tile, and
            # spread over its M-group by comparing with 0..M-1; +1 marks kept slots.
            kept = kt * (BLOCK_K // M * N) + tl.arange(0, BLOCK_K // M * N)
            kept_mask = o_mask[:, None] & (kept[None, :] < K_PAD // M * N)
            v_cols = v_ptr + offs_o[:, None] * stride_v
            meta_cols = meta_ptr + offs_o[:, None] * stride_meta
            if BITS == 4 and BLOCK_K // M * N >= 2:
                # Whole bytes, split into nibbles and interleaved back into kept order.
                b_idx = kt * (BLOCK_K // M * N // 2) + tl.arange(0, BLOCK_K // M * N // 2)
                b_mask = o_mask[:, None] & (b_idx[None, :] < stride_v)
                packed = tl.load(v_cols + b_idx[None, :], mask=b_mask, other=0).to(tl.int32)
                code = tl.interleave(packed & 15, packed >> 4)
            else:
                code = read_bits(v_cols, kept[None, :] * BITS, stride_v, kept_mask, BITS)
            idx = read_bits(meta_cols, kept[None, :] * IDX_BITS, stride_meta, kept_mask, IDX_BITS)
            code = tl.reshape(code + 1, (BLOCK_O, BLOCK_K // M, N))
            idx = tl.reshape(idx, (BLOCK_O, BLOCK_K // M, N))
            slots = tl.arange(0, M)[None, None, None, :]
            spread = tl.where(idx[:, :, :, None] == slots, code[:, :, :, None], 0)
            marked = tl.trans(tl.reshape(tl.sum(spread, axis=2), (BLOCK_O, BLOCK_K)))
            q = tl.where(w_mask & (marked > 0), marked - 1 - zero, 0)
        else:
            # Any N and M: every dense column reads the N pairs of its M-group (cache hits).
            mgroup = (k_idx // M)[:, None]
            pos = (k_idx % M)[:, None]
            q = tl.zeros((BLOCK_K, BLOCK_O), dtype=tl.int32)
            for j in tl.static_range(N):
                kept = mgroup * N + j
                idx = read_bits(meta_rows, kept * IDX_BITS, stride_meta, w_mask, IDX_BITS)
                code = read_bits(v_rows, kept * BITS, stride_v, w_mask, BITS)
                q = tl.where(w_mask & (idx == pos), code - zero, q)
        acc = accumulate(acc, a, q, s_ptr, offs_o, o_mask, stride_s, gidx, k_idx,
                         GROUP, SCALE_MODE, UPCAST, IEEE)
    finish(acc, y_ptr, s_ptr, offs_t, offs_o, T, OUT, stride_yt, stride_s, SCALE_MODE, SPLIT_K)
