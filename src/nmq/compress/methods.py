"""Compression methods: how a layer's mask and quantized values are chosen.

A method is ``PRUNE`` or ``PRUNE+QUANT``:

| name | mask | values | needs calibration |
| --- | --- | --- | --- |
| ``magnitude``, ``rtn`` | N largest ``|w|`` | round to nearest | no |
| ``wanda`` | N largest ``|w| * ||x||`` | round to nearest | yes |
| ``sparsegpt`` | OBS, chosen in the loop | quantized in the same OBS loop (joint) | yes |
| ``gptq`` (= ``magnitude+gptq``), ``wanda+gptq`` | fixed first | GPTQ with that mask | yes |

For a dense pattern (N == M) the mask keeps everything, so ``gptq`` is plain
GPTQ and ``rtn`` plain round-to-nearest.

>>> parse_method("wanda+gptq")
Method(prune='wanda', quant='gptq')
>>> parse_method("sparsegpt").needs_calibration, parse_method("rtn").needs_calibration
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RecipeError
from ..format.pattern import Pattern
from ..format.spec import QuantSpec
from .obs import InverseHessian, obs_compress, prepare_hessian
from .prune import magnitude_mask, wanda_mask
from .quant import group_params

METHOD_NAMES = ("magnitude", "rtn", "wanda", "sparsegpt", "gptq", "magnitude+gptq", "wanda+gptq", "sparsegpt+joint")


@dataclass(frozen=True)
class Method:
    prune: str  # magnitude | wanda | sparsegpt
    quant: str  # rtn | gptq | joint

    @property
    def needs_calibration(self) -> bool:
        return self.prune != "magnitude" or self.quant != "rtn"

    @property
    def compensates(self) -> bool:
        """Whether kept weights are updated to absorb the error of earlier columns (the OBS methods)."""
        return self.prune == "sparsegpt" or self.quant == "gptq"


def parse_method(name: str) -> Method:
    aliases = {"magnitude": "magnitude+rtn", "rtn": "magnitude+rtn", "wanda": "wanda+rtn",
               "sparsegpt": "sparsegpt+joint", "gptq": "magnitude+gptq"}
    full = aliases.get(name, name)
    prune, _, quant = full.partition("+")
    valid = {("magnitude", "rtn"), ("wanda", "rtn"), ("sparsegpt", "joint"), ("magnitude", "gptq"), ("wanda", "gptq")}
    if (prune, quant) not in valid:
        raise RecipeError(f"method {name!r} is unknown; accepted: {', '.join(METHOD_NAMES)}")
    return Method(prune, quant)


def prepare_for(method: Method, pattern: Pattern, spec: QuantSpec | None, hessian, damp: float, act_order: bool):
    """The Hessian in the form ``method`` uses: inverted once for the OBS methods, raw otherwise."""
    uses_obs = method.prune == "sparsegpt" or (method.quant == "gptq" and spec is not None)
    if hessian is None or isinstance(hessian, InverseHessian) or not uses_obs:
        return hessian
    # SparseGPT picks N:M masks as it walks the columns, so it keeps their natural order.
    order = act_order and not (method.prune == "sparsegpt" and not pattern.is_dense)
    return prepare_hessian(hessian, damp, order)


@dataclass
class LayerResult:
    """A compressed layer as a dense fp32 weight (zeros where pruned) and, if quantized, its grid."""

    weight: torch.Tensor  # [out, padded_k]
    keep: torch.Tensor
    scales: torch.Tensor | None
    zeros: torch.Tensor | None


def compress_layer(
    weight: torch.Tensor,
    pattern: Pattern,
    spec: QuantSpec | None,
    method: Method,
    hessian: torch.Tensor | InverseHessian | None = None,
    damp: float = 0.01,
    act_order: bool = False,
) -> LayerResult:
    """Prune and (unless ``spec`` is None) quantize a padded weight ``[out, K]``.

    ``hessian`` is ``X^T X`` of the layer's padded calibration inputs
    ``[K, K]`` (or :func:`nmq.compress.obs.prepare_hessian` of it, to share the
    inversion between layers; or, for Wanda + RTN, only its diagonal ``[K]``);
    required when the method needs calibration. With ``spec``
    None only the mask (and, for SparseGPT, the OBS update) is applied: the
    pruning-only rows of the accuracy table.
    """
    if method.needs_calibration and hessian is None:
        raise RecipeError(f"method {method.prune}+{method.quant} needs calibration inputs; accepted: calibration data "
                          "(nmq compress --calibration FILE, or the default corpus)")
    hessian = prepare_for(method, pattern, spec, hessian, damp, act_order)
    if method.prune == "sparsegpt":
        r = obs_compress(weight, hessian, pattern, spec, select=not pattern.is_dense)
        return LayerResult(r.weight, r.keep, r.scales, r.zeros)
    if method.prune == "magnitude":
        keep = magnitude_mask(weight, pattern)
    else:
        diag = hessian.diag_h if isinstance(hessian, InverseHessian) else \
            hessian if hessian.dim() == 1 else torch.diag(hessian)
        keep = wanda_mask(weight, diag, pattern)
    if spec is None:
        return LayerResult(weight * keep, keep, None, None)
    if method.quant == "gptq":
        r = obs_compress(weight, hessian, pattern, spec, keep=keep)
        return LayerResult(r.weight, r.keep, r.scales, r.zeros)
    out, k = weight.shape
    group = k if spec.group_size == -1 else spec.group_size
    scales, zeros = group_params((weight * keep).reshape(out, k // group, group), spec)
    return LayerResult(weight * keep, keep, scales, zeros)
