"""Optimal Brain Surgeon updates: SparseGPT (N:M pruning, jointly with quantization) and GPTQ.

Both minimise ``||X W^T - X Q^T||^2`` over calibration inputs X, column by
column: a column is pruned and/or quantized, and its error is spread over the
columns not yet processed through the inverse Hessian ``H^-1`` (``H = X^T X``).
The same loop serves every combination:

* ``select=True`` (SparseGPT): the N:M mask of each M-group is chosen when the
  loop reaches it, keeping the N largest ``w^2 / [H^-1]_jj^2``;
* ``keep`` given (GPTQ after a Wanda or magnitude mask): the mask is fixed and
  pruned weights are driven to zero with their error compensated;
* ``spec`` given: kept weights are quantized inside the same loop (joint),
  with each group's scale found when the loop reaches the group, over the
  kept, already-updated weights; ``act_order`` processes columns by
  descending Hessian diagonal with scales fixed up front (static groups).

>>> import torch
>>> from nmq.pattern import Pattern
>>> from nmq.quant import QuantSpec
>>> g = torch.Generator().manual_seed(0)
>>> x, w = torch.randn(256, 64, generator=g), torch.randn(8, 64, generator=g)
>>> r = obs_compress(w, hessian(x), Pattern(2, 4), QuantSpec(4, 32, True), select=True)
>>> bool(((r.weight.reshape(8, 16, 4) != 0).sum(-1) <= 2).all()), r.scales.shape
(True, torch.Size([8, 2]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import NMQError
from .pattern import Pattern
from .quant import QuantSpec, group_params, quantize_with


@dataclass
class OBSResult:
    """The compressed weight (dense fp32, zeros where pruned, on the quantization grid if quantized)."""

    weight: torch.Tensor
    keep: torch.Tensor
    scales: torch.Tensor | None
    zeros: torch.Tensor | None


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``X^T X`` in fp32 for inputs ``x [tokens, K]`` (scale does not matter: damping is relative)."""
    x = x.reshape(-1, x.shape[-1]).float()
    return x.T @ x


@dataclass
class InverseHessian:
    """What the OBS loop needs from ``H``, computed once per set of layers sharing an input."""

    hinv: torch.Tensor  # upper Cholesky factor of (H + damping)^-1, rows/columns in processing order
    perm: torch.Tensor  # processing order of the columns
    dead: torch.Tensor  # columns whose input was always zero
    diag_h: torch.Tensor  # diagonal of H (||x_j||^2), natural order


def prepare_hessian(h: torch.Tensor, damp: float = 0.01, act_order: bool = False) -> InverseHessian:
    h = h.detach().clone().float()
    diag_h = torch.diag(h).clone()
    dead = diag_h == 0
    h[dead, dead] = 1.0
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(h.shape[0])
    return InverseHessian(_inverse_cholesky(h[perm][:, perm], damp), perm, dead, diag_h)


def obs_compress(
    weight: torch.Tensor,
    h: torch.Tensor | InverseHessian,
    pattern: Pattern,
    spec: QuantSpec | None,
    select: bool = False,
    keep: torch.Tensor | None = None,
    damp: float = 0.01,
    blocksize: int = 128,
    act_order: bool = False,
) -> OBSResult:
    """Run the OBS loop on ``weight [out, K]`` with Hessian ``h [K, K]`` (K a multiple of M and the group).

    ``h`` may be prepared already (:func:`prepare_hessian`), which then fixes damping and order.
    """
    w = weight.detach().clone().float()
    out, k = w.shape
    if not isinstance(h, InverseHessian):
        if h.shape != (k, k):
            raise NMQError(f"Hessian is {list(h.shape)}; the weight needs [{k}, {k}]")
        h = prepare_hessian(h, damp, act_order)
    if h.hinv.shape != (k, k):
        raise NMQError(f"Hessian is {list(h.hinv.shape)}; the weight needs [{k}, {k}]")
    act_order = not torch.equal(h.perm, torch.arange(k))
    if select and (keep is not None or act_order):
        raise NMQError("SparseGPT mask selection needs columns in their natural order and no given mask")
    group = k if spec is None or spec.group_size == -1 else spec.group_size
    if k % pattern.m or k % group:
        raise NMQError(f"K={k} must be a multiple of M={pattern.m} and of the group {group}")
    if keep is None:
        keep = torch.ones_like(w, dtype=torch.bool) if (pattern.is_dense or not select) else torch.zeros_like(w, dtype=torch.bool)
    keep = keep.clone()

    w[:, h.dead] = 0.0
    perm = h.perm
    inv_perm = torch.argsort(perm)
    hinv = h.hinv
    w, keep = w[:, perm], keep[:, perm]
    diag = torch.diag(hinv)

    groups = k // group
    scales = torch.zeros(out, groups, dtype=torch.float16) if spec else None
    zeros = torch.zeros(out, groups, dtype=torch.int32) if spec and not spec.symmetric else None
    if spec and act_order:  # static groups: every scale from the original kept weights
        orig = (w * keep)[:, inv_perm].reshape(out, groups, group)
        scales, zeros = group_params(orig, spec)
    group_of = perm // group  # quantization group of each processed column

    bs = max(blocksize, group) if not act_order else blocksize
    bs = -(-bs // group) * group if not act_order else bs
    q_all = torch.zeros_like(w)
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if select and spec is None and col % pattern.m == 0:
                score = w1[:, i : i + pattern.m] ** 2 / diag[col : col + pattern.m].unsqueeze(0) ** 2
                top = torch.sort(score, dim=1, descending=True, stable=True).indices[:, : pattern.n]
                keep[:, col : col + pattern.m] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)
            if spec and not act_order and col % group == 0:
                if select:  # every M-group of the quantization group: masks first, then the scale
                    for c in range(col, col + group, pattern.m):
                        j = c - i1
                        score = w1[:, j : j + pattern.m] ** 2 / diag[c : c + pattern.m].unsqueeze(0) ** 2
                        top = torch.sort(score, dim=1, descending=True, stable=True).indices[:, : pattern.n]
                        keep[:, c : c + pattern.m] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)
                cur = (w1[:, i : i + group] * keep[:, col : col + group]).unsqueeze(1)
                g = col // group
                s, z = group_params(cur, spec)
                scales[:, g] = s[:, 0]
                if zeros is not None:
                    zeros[:, g] = z[:, 0]
            col_w = w1[:, i]
            q = col_w * keep[:, col]
            if spec:
                g = int(group_of[col])
                z = None if zeros is None else zeros[:, g : g + 1]
                codes = quantize_with(q.reshape(out, 1, 1), scales[:, g : g + 1], z, spec).reshape(out)
                zero = spec.offset if z is None else z[:, 0]
                q = (codes - zero).float() * scales[:, g].float()
                q = q * keep[:, col]
            q1[:, i] = q
            e = (col_w - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        q_all[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return OBSResult(q_all[:, inv_perm], keep[:, inv_perm], scales, zeros)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, retrying with more damping."""
    k = h.shape[0]
    mean = torch.diag(h).mean()
    for factor in (1, 10, 100):
        hd = h + torch.eye(k) * (damp * factor * mean)
        try:
            low = torch.linalg.cholesky(hd.double())
            # cholesky_solve against I is several times faster than cholesky_inverse here
            inv = torch.cholesky_solve(torch.eye(k, dtype=torch.float64), low)
            return torch.linalg.cholesky(inv, upper=True).float()
        except RuntimeError:
            continue
    raise NMQError("the calibration Hessian is not positive definite even with 100x damping")
