"""compress_weight: one dense 2-D weight to an NMQTensor (prune, then quantize).

>>> import torch, nmq
>>> w = torch.randn(64, 300)
>>> t = nmq.compress_weight(w, pattern="4:8", bits=8, group_size=64, symmetric=False)
>>> t.shape, t.padded_in, t.groups
((64, 300), 320, 5)
>>> t.to_dense().shape
torch.Size([64, 300])
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .errors import WeightError
from .pattern import Pattern, check_encoding
from .prune import magnitude_mask
from .quant import QuantSpec
from .tensor import NMQTensor, check_group, from_mask, padded_k

# Methods that need no calibration data: each maps a padded weight to a keep mask.
# "rtn" names the same magnitude mask (for dense patterns it only quantizes).
PRUNERS: dict[str, Callable[[torch.Tensor, Pattern], torch.Tensor]] = {
    "magnitude": magnitude_mask,
    "rtn": magnitude_mask,
}


def compress_weight(
    w,
    pattern: str | tuple[int, int] | Pattern = "2:4",
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    metadata: str = "rank",
    method: str = "magnitude",
) -> NMQTensor:
    """Prune ``w [out, in]`` to ``pattern`` along ``in`` and quantize what is kept.

    ``w`` is a torch tensor or numpy array of floats. ``group_size`` counts
    dense K positions (a multiple of M, or -1 for one group per row).
    """
    pat = Pattern.parse(pattern)
    spec = QuantSpec(bits, group_size, symmetric)
    check_group(pat, group_size)
    check_encoding(metadata)
    if method not in PRUNERS:
        raise WeightError(f"method {method!r} is unknown; accepted: {', '.join(PRUNERS)}")
    weight = as_weight(w)
    out, k = weight.shape
    padded = torch.nn.functional.pad(weight, (0, padded_k(k, pat, group_size) - k))
    keep = PRUNERS[method](padded, pat)
    return from_mask(padded, keep, pat, spec, metadata, in_features=k)


def as_weight(w, name: str = "weight") -> torch.Tensor:
    """Check that ``w`` is a finite 2-D float array and return it as fp32 torch."""
    if isinstance(w, np.ndarray):
        w = torch.from_numpy(w)
    if not isinstance(w, torch.Tensor):
        raise WeightError(f"{name} is a {type(w).__name__}; accepted: a 2-D torch tensor or numpy array")
    if w.dim() != 2:
        raise WeightError(f"{name} has {w.dim()} dimension(s) {list(w.shape)}; accepted: a 2-D weight [out, in]")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise WeightError(f"{name} has shape {list(w.shape)}; accepted: at least one row and one column")
    if not (w.is_floating_point()):
        raise WeightError(f"{name} has dtype {w.dtype}; accepted: a floating-point weight")
    w = w.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise WeightError(f"{name} holds {bad} NaN/Inf value(s); accepted: finite weights only")
    return w
