"""compress_weight: one dense 2-D weight to an NMQTensor (prune, then quantize).

>>> import torch, nmq
>>> w = torch.randn(64, 300)
>>> t = nmq.compress_weight(w, pattern="4:8", bits=8, group_size=64, symmetric=False)
>>> t.shape, t.padded_in, t.groups
((64, 300), 320, 5)
>>> x = torch.randn(512, 300)      # calibration inputs of the layer
>>> t = nmq.compress_weight(w, pattern="2:4", group_size=64, method="sparsegpt", inputs=x)
>>> t.to_dense().shape
torch.Size([64, 300])
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import WeightError
from ..format import bitpack
from ..format.pattern import Pattern, check_encoding
from ..format.spec import QuantSpec
from ..format.tensor import NMQTensor, check_group, encode_meta, padded_k
from .methods import compress_layer
from .obs import hessian
from .quant import group_params, quantize_with
from .recipe import Recipe


def compress_weight(
    w,
    pattern: str | tuple[int, int] | Pattern = "2:4",
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    metadata: str = "rank",
    method: str = "magnitude",
    inputs: torch.Tensor | None = None,
    damp: float = 0.01,
    act_order: bool = False,
) -> NMQTensor:
    """Prune ``w [out, in]`` to ``pattern`` along ``in`` and quantize what is kept.

    ``w`` is a torch tensor or numpy array of floats. ``group_size`` counts
    dense K positions (a multiple of M, or -1 for one group per row).
    Calibrated methods (wanda, sparsegpt, gptq) take the layer's inputs
    ``inputs [tokens, in]``; see :mod:`nmq.compress.methods`.
    """
    recipe = Recipe(pattern=pattern, bits=bits, group_size=group_size, symmetric=symmetric, metadata=metadata,
                    method=method, damp=damp, act_order=act_order)
    return compress_with(w, recipe, inputs)


def compress_with(w, recipe: Recipe, inputs: torch.Tensor | None = None) -> NMQTensor:
    """:func:`compress_weight` with a parsed recipe (its targets and ignore play no part here)."""
    weight = as_weight(w)
    out, k = weight.shape
    kp = padded_k(k, recipe.pattern, recipe.group_size)
    h = None
    if inputs is not None:
        x = torch.as_tensor(inputs).reshape(-1, inputs.shape[-1]).float()
        if x.shape[1] != k:
            raise WeightError(f"calibration inputs have {x.shape[1]} features; the weight {list(weight.shape)} needs {k}")
        h = hessian(torch.nn.functional.pad(x, (0, kp - k)))
    return compress_padded(torch.nn.functional.pad(weight, (0, kp - k)), k, recipe, h)


def compress_padded(weight: torch.Tensor, in_features: int, recipe: Recipe, h=None) -> NMQTensor:
    """compress_weight on an already padded weight ``[out, padded_k]`` (and Hessian, or its prepared form)."""
    r = compress_layer(weight, recipe.pattern, recipe.quant, recipe.method, h, damp=recipe.damp, act_order=recipe.act_order)
    return from_mask(r.weight, r.keep, recipe.pattern, recipe.quant, recipe.metadata, in_features, r.scales, r.zeros)


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


def from_mask(
    weight: torch.Tensor, keep: torch.Tensor, pattern: Pattern, spec: QuantSpec, metadata: str, in_features: int,
    scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None,
) -> NMQTensor:
    """Quantize the kept entries of a padded ``weight [out, padded_k]`` and pack them.

    ``keep`` is a bool mask of the same shape with exactly N True per M-group;
    ``in_features`` is the logical K before padding. Only kept entries are
    quantized; everything else is zero by construction. ``scales`` (fp16) and
    ``zeros`` (int32) per group, when given, are used instead of RTN's own, so
    a method that chose them (GPTQ, SparseGPT) is reproduced exactly.
    """
    check_group(pattern, spec.group_size)
    out, kp = weight.shape
    if kp != padded_k(in_features, pattern, spec.group_size) or keep.shape != weight.shape:
        raise ValueError(f"from_mask: weight {list(weight.shape)} / mask {list(keep.shape)} "
                         f"do not match K={in_features} padded for {pattern}, group {spec.group_size}")
    mgroups = kp // pattern.m
    grouped = keep.reshape(out, mgroups, pattern.m)
    if not bool((grouped.sum(-1) == pattern.n).all()):
        raise ValueError(f"from_mask: the keep mask must hold exactly {pattern.n} entries per group of {pattern.m}")
    order = torch.sort(grouped.to(torch.uint8), dim=-1, descending=True, stable=True)
    group_pos = order.indices[..., : pattern.n].sort(dim=-1).values
    kept = torch.gather(weight.float().reshape(out, mgroups, pattern.m), 2, group_pos)
    group = kp if spec.group_size == -1 else spec.group_size
    grouped_kept = kept.reshape(out, kp // group, -1)
    if scales is None:
        scales, zeros = group_params(grouped_kept, spec)
    codes = quantize_with(grouped_kept, scales, zeros, spec)
    return NMQTensor(
        shape=(out, in_features),
        pattern=pattern,
        bits=spec.bits,
        group_size=spec.group_size,
        symmetric=spec.symmetric,
        metadata=check_encoding(metadata),
        values=bitpack.pack(codes.reshape(out, -1), spec.bits),
        meta=encode_meta(group_pos, pattern, metadata),
        scales=scales,
        zeros=None if zeros is None else bitpack.pack(zeros, spec.bits),
    )
