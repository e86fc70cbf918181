"""``X^T X`` of bf16 activations with bf16 dot products and fp32 sums: calibration Hessians of bf16 models.

A 7B model is calibrated in bf16 (it only fits 24 GB in 16 bits), and its
Hessians are most of the work: down_proj's 11008 x 11008 over 65,536 tokens
is 7.9 TFLOP even when only the upper triangle is computed. PyTorch's bf16
matmuls round their output to bf16, too coarse for a Hessian, and fp32
matmuls run at a quarter of the bf16 rate. This kernel multiplies the bf16
values exactly and adds in fp32 (``vdpbf16ps``), so the result is an fp32
``X^T X`` of the same values, summed in another order.

>>> import torch
>>> x = torch.randn(300, 40).bfloat16()
>>> h = torch.zeros(padded_features(40), padded_features(40))
>>> if gram_bf16_available():
...     add_gram_bf16(h, x)
... else:
...     h[:40, :40] = torch.triu(x.float().T @ x.float())
>>> ref = x.double().T @ x.double()
>>> bool(torch.allclose(torch.triu(h[:40, :40]).double(), torch.triu(ref), rtol=1e-4, atol=1e-3))
True
"""

from __future__ import annotations

import torch

from ...errors import BackendError
from .ext import apply_env, native

PANEL = 16  # features per panel
PAIRS_PER_CALL = 256  # token pairs per call: a 48-feature column tile is 48 KB, resident in L2


def gram_bf16_available() -> bool:
    """True when the CPU extension runs :func:`add_gram_bf16` at the current ISA level (AVX-512 BF16)."""
    if native is None:
        return False
    apply_env()
    return bool(native.has_gram_bf16())


def padded_features(k: int) -> int:
    """Side of the accumulator :func:`add_gram_bf16` takes for ``k`` features."""
    return -(-k // PANEL) * PANEL


def add_gram_bf16(h: torch.Tensor, x: torch.Tensor) -> None:
    """``h[:k, :k] += X^T X`` on and above the diagonal for bf16 ``x [tokens, k]``.

    ``h`` is a contiguous fp32 ``[padded_features(k)] * 2`` accumulator; entries
    below the diagonal are partly written and meant to be replaced by the
    mirror of the upper triangle.
    """
    if not gram_bf16_available():
        raise BackendError("add_gram_bf16 needs the CPU extension at an ISA level with AVX-512 BF16")
    if x.dim() != 2 or x.dtype != torch.bfloat16 or x.device.type != "cpu":
        raise BackendError(f"add_gram_bf16 takes CPU bf16 x [tokens, k]; got {x.dtype} {list(x.shape)} on {x.device}")
    tokens, k = x.shape
    kp = padded_features(k)
    if h.shape != (kp, kp) or h.dtype != torch.float32 or not h.is_contiguous():
        raise BackendError(f"the accumulator must be contiguous fp32 [{kp}, {kp}]; got {h.dtype} {list(h.shape)}")
    step = 2 * PAIRS_PER_CALL
    for t0 in range(0, tokens, step):
        part = x[t0 : t0 + step]
        pairs = -(-part.shape[0] // 2)
        padded = torch.nn.functional.pad(part, (0, kp - k, 0, 2 * pairs - part.shape[0]))
        # [pair, 2, panel, 16] -> [panel, pair, 16, 2]: a panel's bf16 pairs are the 32-bit lanes vdpbf16ps reads
        packed = padded.view(pairs, 2, kp // PANEL, PANEL).permute(2, 0, 3, 1).contiguous()
        native.gram_bf16(packed.data_ptr(), kp // PANEL, pairs, h.data_ptr(), kp)
