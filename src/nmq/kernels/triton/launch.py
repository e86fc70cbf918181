"""Host side of the Triton kernels: the packed weight, launch configurations, autotuning.

On a GPU the kernels are autotuned over configurations for Ampere (sm_80/86:
128x128/64 tiles, 3-4 stages) and Hopper (sm_90: wider 128x256 tiles and 8
warps, which Triton maps onto wgmma), split in two families keyed on the
token count: up to 16 tokens a 16-row token tile with split-K (the weight
stream is the cost, and K must be cut to fill every SM), above that larger
token tiles without split-K. Configurations whose K tile does not fit inside
one quantization group are pruned, so the scale multiplies whole tile
products (see ``accumulate`` in :mod:`.common`).

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors with one fixed
small configuration (autotuning times CUDA events), or with an explicit one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton

from ...format.tensor import NMQTensor
from .dense_int4 import dense_int4_kernel
from .nm_int4 import nm_int4_kernel

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
SMALL_BATCH = 16
SUPPORTED_BITS = (2, 3, 4, 8)

INTERPRET_CONFIG = {"BLOCK_T": 16, "BLOCK_O": 32, "BLOCK_K": 32, "SPLIT_K": 1}


def _cfg(bt: int, bo: int, bk: int, split: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_T": bt, "BLOCK_O": bo, "BLOCK_K": bk, "SPLIT_K": split},
                         num_warps=warps, num_stages=stages)


SMALL_CONFIGS = [
    _cfg(16, 64, 64, 1, 4, 4), _cfg(16, 128, 64, 1, 4, 4), _cfg(16, 64, 128, 1, 4, 3),
    _cfg(16, 64, 64, 2, 4, 4), _cfg(16, 128, 64, 2, 4, 4), _cfg(16, 64, 128, 2, 4, 3),
    _cfg(16, 64, 64, 4, 4, 4), _cfg(16, 32, 128, 4, 4, 3), _cfg(16, 128, 128, 4, 8, 3),
    _cfg(16, 64, 64, 8, 4, 4), _cfg(16, 32, 64, 8, 2, 5), _cfg(16, 128, 32, 8, 4, 5),
]
LARGE_CONFIGS = [
    _cfg(32, 64, 64, 1, 4, 4), _cfg(32, 128, 64, 2, 4, 4), _cfg(64, 64, 64, 1, 4, 4),
    _cfg(64, 128, 64, 1, 4, 4), _cfg(64, 128, 32, 1, 4, 5), _cfg(128, 128, 64, 1, 8, 3),
    _cfg(128, 64, 64, 1, 4, 4), _cfg(64, 256, 64, 1, 8, 3), _cfg(128, 256, 64, 1, 8, 3),
    _cfg(128, 128, 32, 1, 4, 4),
]
# Tuned once per token bucket, shape and weight format (the activation dtype is added by Triton).
TUNE_KEY = ["T_BUCKET", "OUT", "K", "GROUP", "BITS", "SYMMETRIC"]
NM_TUNE_KEY = TUNE_KEY + ["N", "M", "VECTOR"]


def scale_mode(group: int, ngroups: int, block_k: int) -> int:
    """0: scale per K tile, 1: one scale per row (after the K loop), 2: scale per weight."""
    if ngroups == 1:
        return 1
    return 0 if group % block_k == 0 else 2


def _heuristics(args: dict) -> int:
    return scale_mode(args["GROUP"], args["NGROUPS"], args["BLOCK_K"])


def prune_configs(configs, named_args, **kwargs):
    """Keep configurations whose K tile lies inside one group, when any does."""
    group = kwargs.get("GROUP", named_args.get("GROUP"))
    ngroups = kwargs.get("NGROUPS", named_args.get("NGROUPS"))
    good = [c for c in configs if scale_mode(group, ngroups, c.kwargs["BLOCK_K"]) != 2]
    return good or list(configs)


def tuned(kernel, configs, do_bench=None):
    """``kernel`` autotuned over ``configs`` (``do_bench`` replaces CUDA-event timing, for tests)."""
    key = NM_TUNE_KEY if "meta_ptr" in kernel.arg_names else TUNE_KEY
    extra = {} if do_bench is None else {"do_bench": do_bench}
    return triton.autotune(configs=configs, key=key, reset_to_zero=["y_ptr"],
                           prune_configs_by={"early_config_prune": prune_configs}, **extra)(kernel)


NM_KERNEL = triton.heuristics({"SCALE_MODE": _heuristics})(nm_int4_kernel)
DENSE_KERNEL = triton.heuristics({"SCALE_MODE": _heuristics})(dense_int4_kernel)
TUNED = {
    ("nm", True): tuned(NM_KERNEL, SMALL_CONFIGS), ("nm", False): tuned(NM_KERNEL, LARGE_CONFIGS),
    ("dense", True): tuned(DENSE_KERNEL, SMALL_CONFIGS), ("dense", False): tuned(DENSE_KERNEL, LARGE_CONFIGS),
}


@dataclass
class TritonWeight:
    """A compressed weight laid out for the Triton kernels (no dense copy)."""

    values: torch.Tensor
    meta: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    out_features: int
    in_features: int
    padded_in: int
    n: int
    m: int
    bits: int
    index_bits: int
    group: int
    groups: int
    symmetric: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def kind(self) -> str:
        return "dense" if self.n == self.m else "nm"

    @property
    def nbytes(self) -> int:
        """Bytes one matmul reads from the weight: all compressed fields."""
        fields = [self.values, self.meta, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(f.numel() * f.element_size() for f in fields)


def pack_weight(t: NMQTensor, device: str | torch.device) -> TritonWeight:
    """The kernel layout of ``t`` on ``device``: ``index`` metadata, every field contiguous."""
    t = t.validate()
    p = t.pattern
    meta = t.meta if p.is_dense else t.with_metadata("index").meta
    zeros = None if t.zeros is None else t.zeros.contiguous().to(device)
    return TritonWeight(
        values=t.values.contiguous().to(device), meta=meta.contiguous().to(device),
        scales=t.scales.contiguous().to(device), zeros=zeros,
        out_features=t.out_features, in_features=t.in_features, padded_in=t.padded_in,
        n=p.n, m=p.m, bits=t.bits, index_bits=p.index_bits, group=t.group, groups=t.groups,
        symmetric=bool(t.symmetric),
    )


def _bucket(tokens: int) -> int:
    return min(1 << max(0, math.ceil(math.log2(max(tokens, 1)))), 256)


def vectorizable(n: int, m: int) -> bool:
    """Whether the N:M kernel can rebuild tiles with reshapes (Triton shapes are powers of two)."""
    return n & (n - 1) == 0 and m & (m - 1) == 0


def triton_matmul(x: torch.Tensor, w: TritonWeight, config: dict | None = None,
                  vector: bool | None = None) -> torch.Tensor:
    """``x [T, in] @ W.T`` as fp32 ``[T, out]`` on ``x``'s device.

    ``config`` (``BLOCK_T``, ``BLOCK_O``, ``BLOCK_K``, ``SPLIT_K``, and
    optionally ``num_warps``/``num_stages``) bypasses autotuning; ``vector``
    forces the N:M kernel's way of rebuilding tiles (default: the reshape
    one where N and M allow it).
    """
    x = x.contiguous()
    tokens, out = x.shape[0], w.out_features
    y = torch.zeros(tokens, out, dtype=torch.float32, device=x.device)
    if tokens == 0:
        return y
    upcast = INTERPRET and x.dtype == torch.bfloat16
    ieee = x.dtype == torch.float32
    zeros = w.zeros if w.zeros is not None else w.scales  # never read when symmetric
    stride_z = w.zeros.stride(0) if w.zeros is not None else 0
    common = dict(GROUP=w.group, SYMMETRIC=w.symmetric, UPCAST=upcast, IEEE=ieee, BITS=w.bits)
    if w.kind == "nm":
        args = (x, w.values, w.meta, w.scales, zeros, y, tokens, out, w.in_features, w.padded_in, _bucket(tokens),
                w.groups, x.stride(0), w.values.stride(0), w.meta.stride(0), w.scales.stride(0), stride_z, y.stride(0))
        vector = vectorizable(w.n, w.m) if vector is None else vector
        common.update(N=w.n, M=w.m, IDX_BITS=w.index_bits, VECTOR=vector)
    else:
        args = (x, w.values, w.scales, zeros, y, tokens, out, w.in_features, _bucket(tokens), w.groups,
                x.stride(0), w.values.stride(0), w.scales.stride(0), stride_z, y.stride(0))
    if config is None and not INTERPRET:
        kernel = TUNED[(w.kind, tokens <= SMALL_BATCH)]

        def grid(meta):
            return (triton.cdiv(out, meta["BLOCK_O"]), triton.cdiv(tokens, meta["BLOCK_T"]), meta["SPLIT_K"])

        kernel[grid](*args, **common)
        return y
    config = dict(INTERPRET_CONFIG if config is None else config)
    kernel = NM_KERNEL if w.kind == "nm" else DENSE_KERNEL
    grid = (triton.cdiv(out, config["BLOCK_O"]), triton.cdiv(tokens, config["BLOCK_T"]), config["SPLIT_K"])
    kernel[grid](*args, **common, **config)
    return y
