"""Calibration statistics of a layer's inputs: ``X^T X`` (the Hessian of the layer-wise loss) and its diagonal."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..backends.cpu.gram import add_gram_bf16, gram_bf16_available, padded_features


def squared_norms(chunks: Iterable[torch.Tensor], k: int) -> torch.Tensor:
    """``diag(X^T X)`` (fp32) over chunks of ``X [..., k]``."""
    d = torch.zeros(k)
    for x in chunks:
        d += x.reshape(-1, k).float().square().sum(0)
    return d


def gram(chunks: Iterable[torch.Tensor], k: int, block: int = 1024) -> torch.Tensor:
    """``X^T X`` in fp32 over chunks of ``X [..., k]``.

    Only the blocks on and above the diagonal are multiplied (the lower
    triangle is mirrored at the end): about half the FLOPs of ``x.T @ x``,
    which for a 7B MLP's 11008-wide input is most of calibration's time.
    bf16 chunks go to :func:`nmq.backends.cpu.gram.add_gram_bf16` where the
    CPU has bf16 dot products (exact products, fp32 sums, ~4x the fp32 rate).
    """
    h = hb = None
    for x in chunks:
        x = x.reshape(-1, k)
        if x.dtype == torch.bfloat16 and gram_bf16_available():
            if hb is None:
                hb = torch.zeros(padded_features(k), padded_features(k))
            add_gram_bf16(hb, x)
            continue
        x = x.float()
        if h is None:
            h = torch.zeros(k, k)
        for i in range(0, k, block):
            h[i : i + block, i:].addmm_(x[:, i : i + block].T, x[:, i:])
    if hb is not None:
        h = hb[:k, :k].clone() if h is None else h.add_(hb[:k, :k])
        del hb
    if h is None:
        h = torch.zeros(k, k)
    h.triu_()
    h += h.triu(1).T
    return h


def padded_hessian(h: torch.Tensor, kp: int) -> torch.Tensor:
    """``h [K, K]`` (or its diagonal ``[K]``) with zeros for the padded inputs."""
    k = h.shape[0]
    return torch.nn.functional.pad(h, (0, kp - k) * h.dim()) if kp != k else h
