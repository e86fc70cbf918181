"""compress_weight: one dense 2-D weight to an NMQTensor (prune, then quantize).

``bits=16`` prunes only: the kept values are stored as 16-bit floats, bfloat16
for a bfloat16 weight (exactly), else float16 (three more mantissa bits than
bfloat16). A kept value beyond float16's range (65504) is a QuantError rather
than a silent switch to bfloat16: the type depends on the weight's dtype
alone, so a weight compressed in row chunks gets one type throughout.

>>> import torch, nmq
>>> w = torch.randn(64, 300)
>>> t = nmq.compress_weight(w, pattern="4:8", bits=8, group_size=64, symmetric=False)
>>> t.shape, t.padded_in, t.groups
((64, 300), 320, 5)
>>> x = torch.randn(512, 300)      # calibration inputs of the layer
>>> t = nmq.compress_weight(w, pattern="2:4", group_size=64, method="sparsegpt", inputs=x)
>>> t.to_dense().shape
torch.Size([64, 300])
>>> w = torch.randn(8, 256, dtype=torch.bfloat16)
>>> t = nmq.compress_weight(w, pattern="2:4", bits=16)
>>> t.value_dtype, t.storage().bits_per_weight    # 16 bits per kept value, 3 bits of rank per 4 weights
(torch.bfloat16, 8.75)
>>> bool(((t.to_dense(torch.bfloat16) == w) | (t.to_dense() == 0)).all())
True
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import QuantError, WeightError
from ..format import bitpack
from ..format.pattern import Pattern, check_encoding
from ..format.spec import FLOAT_BITS, QuantSpec, encode_floats
from ..format.tensor import NMQTensor, check_group, encode_meta, padded_k
from .methods import compress_layer
from .obs import hessian
from .quant import FP16_MAX, group_params, quantize_with
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
    ``inputs [tokens, in]``; see :mod:`nmq.compress.methods`. ``bits=16``
    prunes only (magnitude, wanda or sparsegpt) and keeps the values as
    16-bit floats (module doc); group size and symmetry do not apply.
    """
    recipe = Recipe(pattern=pattern, bits=bits, group_size=group_size, symmetric=symmetric, metadata=metadata,
                    method=method, damp=damp, act_order=act_order)
    return compress_with(w, recipe, inputs)


def compress_with(w, recipe: Recipe, inputs: torch.Tensor | None = None) -> NMQTensor:
    """:func:`compress_weight` with a parsed recipe (its targets and ignore play no part here)."""
    weight = as_weight(w)
    source_dtype = w.dtype if isinstance(w, torch.Tensor) else torch.float32
    out, k = weight.shape
    kp = padded_k(k, recipe.pattern, recipe.group_size)
    h = None
    if inputs is not None:
        x = torch.as_tensor(inputs).reshape(-1, inputs.shape[-1]).float()
        if x.shape[1] != k:
            raise WeightError(f"calibration inputs have {x.shape[1]} features; the weight {list(weight.shape)} needs {k}")
        h = hessian(torch.nn.functional.pad(x, (0, kp - k)))
    return compress_padded(torch.nn.functional.pad(weight, (0, kp - k)), k, recipe, h, source_dtype)


def compress_padded(weight: torch.Tensor, in_features: int, recipe: Recipe, h=None,
                    source_dtype: torch.dtype = torch.float32) -> NMQTensor:
    """compress_weight on an already padded weight ``[out, padded_k]`` (and Hessian, or its prepared form);
    ``source_dtype``, the weight's own dtype, chooses a bits-16 recipe's value dtype."""
    r = compress_layer(weight, recipe.pattern, recipe.quant, recipe.method, h, damp=recipe.damp, act_order=recipe.act_order)
    return from_mask(r.weight, r.keep, recipe.pattern, recipe.quant, recipe.metadata, in_features, r.scales, r.zeros,
                     source_dtype=source_dtype)


def value_dtype_for(source_dtype: torch.dtype) -> torch.dtype:
    """The 16-bit float type the unquantized kept values of a ``source_dtype`` weight are stored in."""
    return torch.bfloat16 if source_dtype == torch.bfloat16 else torch.float16


def check_float16_range(values: torch.Tensor) -> None:
    """QuantError unless every value rounds to a finite float16."""
    # Rounding is monotonic, so the largest magnitude overflows float16 if any value does.
    top = values.abs().amax() if values.numel() else values.new_zeros(())
    if bool(torch.isinf(top.to(torch.float16))):
        raise QuantError(f"a kept weight of magnitude {top.item():.4g} overflows float16 (max {FP16_MAX:g}), which "
                         "bits 16 stores a non-bfloat16 weight in; accepted: weights within float16's range, or the "
                         "model in bfloat16 (nmq compress --dtype bfloat16), whose values are stored as bfloat16")


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
    weight: torch.Tensor, keep: torch.Tensor, pattern: Pattern, spec: QuantSpec | None, metadata: str,
    in_features: int, scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None,
    source_dtype: torch.dtype = torch.float32,
) -> NMQTensor:
    """Quantize the kept entries of a padded ``weight [out, padded_k]`` and pack them.

    ``keep`` is a bool mask of the same shape with exactly N True per M-group;
    ``in_features`` is the logical K before padding. Only kept entries are
    quantized; everything else is zero by construction. ``scales`` (fp16) and
    ``zeros`` (int32) per group, when given, are used instead of RTN's own, so
    a method that chose them (GPTQ, SparseGPT) is reproduced exactly. With
    ``spec`` None the kept entries are stored as 16-bit floats (bits 16), of
    the type :func:`value_dtype_for` a ``source_dtype`` weight.
    """
    group_size = -1 if spec is None else spec.group_size
    check_group(pattern, group_size)
    out, kp = weight.shape
    if kp != padded_k(in_features, pattern, group_size) or keep.shape != weight.shape:
        raise ValueError(f"from_mask: weight {list(weight.shape)} / mask {list(keep.shape)} "
                         f"do not match K={in_features} padded for {pattern}, group {group_size}")
    mgroups = kp // pattern.m
    grouped = keep.reshape(out, mgroups, pattern.m)
    if not bool((grouped.sum(-1) == pattern.n).all()):
        raise ValueError(f"from_mask: the keep mask must hold exactly {pattern.n} entries per group of {pattern.m}")
    order = torch.sort(grouped.to(torch.uint8), dim=-1, descending=True, stable=True)
    group_pos = order.indices[..., : pattern.n].sort(dim=-1).values
    kept = torch.gather(weight.float().reshape(out, mgroups, pattern.m), 2, group_pos)
    if spec is None:
        value_dtype = value_dtype_for(source_dtype)
        if value_dtype == torch.float16:
            check_float16_range(kept)
        return NMQTensor(
            shape=(out, in_features), pattern=pattern, bits=FLOAT_BITS, group_size=-1, symmetric=True,
            metadata=check_encoding(metadata),
            values=bitpack.pack(encode_floats(kept.reshape(out, -1), value_dtype), FLOAT_BITS),
            meta=encode_meta(group_pos, pattern, metadata),
            scales=torch.zeros(out, 0, dtype=torch.float16),  # no scales: the field stays, with no columns
            value_dtype=value_dtype,
        )
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
