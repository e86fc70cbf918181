"""N:M pruning: choose which weights of each M-group along K are kept.

A pruning method produces a *keep mask* with exactly N True entries in every
M-group (a group whose weights are mostly zero still keeps N entries; the
extra kept ones are zeros). Ties are broken towards the lower index, so the
result is deterministic.

>>> import torch
>>> from nmq.format.pattern import Pattern
>>> w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 0.0, 0.0, 0.0, 0.3]])
>>> magnitude_mask(w, Pattern(2, 4)).int().tolist()
[[0, 1, 1, 0, 1, 0, 0, 1]]
"""

from __future__ import annotations

import torch

from ..errors import WeightError
from ..format.pattern import Pattern


def select_nm(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep mask of the N highest ``scores [rows, K]`` per M-group (K a multiple of M)."""
    rows, k = scores.shape
    if k % pattern.m:
        raise WeightError(f"N:M selection needs K ({k}) to be a multiple of M ({pattern.m})")
    groups = scores.reshape(rows, k // pattern.m, pattern.m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., : pattern.n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.reshape(rows, k)


def magnitude_mask(weight: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep the N largest ``|w|`` in each M-group."""
    return select_nm(weight.abs(), pattern)


def wanda_mask(weight: torch.Tensor, hessian_diag: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Wanda: keep the N largest ``|w_ij| * ||x_j||`` per M-group (``||x_j||^2`` is ``H_jj``)."""
    return select_nm(weight.abs() * hessian_diag.clamp_min(0).sqrt().unsqueeze(0), pattern)


def is_nm_sparse(weight: torch.Tensor, pattern: Pattern) -> bool:
    """True when every M-group of ``weight [rows, K]`` has at most N nonzeros."""
    rows, k = weight.shape
    pad = (-k) % pattern.m
    w = torch.nn.functional.pad(weight, (0, pad)).reshape(rows, -1, pattern.m)
    return bool(((w != 0).sum(-1) <= pattern.n).all())
