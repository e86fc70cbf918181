"""Compression methods: how a layer's mask and quantized values are chosen, one registered handler each.

| name | mask | values | needs calibration |
| --- | --- | --- | --- |
| ``magnitude``, ``rtn`` | N largest ``|w|`` | round to nearest | no |
| ``wanda`` | N largest ``|w| * ||x||`` | round to nearest | yes |
| ``sparsegpt`` | OBS, chosen in the loop | quantized in the same OBS loop (joint) | yes |
| ``gptq`` (= ``magnitude+gptq``), ``wanda+gptq`` | fixed first | GPTQ with that mask | yes |

For a dense pattern (N == M) the mask keeps everything, so ``gptq`` is plain
GPTQ and ``rtn`` plain round-to-nearest. A method keeps the name it was asked
by (``rtn`` stays ``rtn`` in a recipe record).

Without quantization (``bits=16``, or ``spec`` None below) only the mask
(and SparseGPT's OBS updates of the kept weights) apply; a recipe takes the
names of a pruning rule alone there (:func:`prune_only_names`).

>>> get_method("wanda+gptq")
WandaGptq(name='wanda+gptq', prune='wanda', quant='gptq')
>>> get_method("sparsegpt").needs_calibration, get_method("rtn").needs_calibration
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


@dataclass
class LayerResult:
    """A compressed layer as a dense fp32 weight (zeros where pruned) and, if quantized, its grid."""

    weight: torch.Tensor  # [out, padded_k]
    keep: torch.Tensor
    scales: torch.Tensor | None
    zeros: torch.Tensor | None


@dataclass(frozen=True)
class Method:
    """A registered method: ``prune`` chooses the mask, ``quant`` the values; subclasses do the work."""

    name: str
    prune: str
    quant: str

    @property
    def needs_calibration(self) -> bool:
        return True

    @property
    def compensates(self) -> bool:
        """Whether kept weights are updated to absorb the error of earlier columns (the OBS methods)."""
        return False

    @property
    def prunes_only(self) -> bool:
        """Whether the name asks for a pruning rule alone, no quantizer (magnitude, wanda, sparsegpt): what a
        recipe without quantization (bits 16) takes."""
        return self.name == self.prune

    def prepare(self, hessian, pattern: Pattern, spec: QuantSpec | None, damp: float, act_order: bool):
        """The Hessian in the form this method uses (inverted once for the OBS methods, shared by a group's layers)."""
        return hessian

    def compress(self, weight: torch.Tensor, pattern: Pattern, spec: QuantSpec | None, hessian) -> LayerResult:
        raise NotImplementedError


_REGISTRY: dict[str, type[Method]] = {}


def register(*names: str):
    """Class decorator: the method answers to each of ``names`` (the first is its canonical name)."""
    def add(cls: type[Method]) -> type[Method]:
        for n in names:
            _REGISTRY[n] = cls
        return cls
    return add


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def prune_only_names() -> tuple[str, ...]:
    """The methods that prune without quantizing (:attr:`Method.prunes_only`)."""
    return tuple(n for n in _REGISTRY if get_method(n).prunes_only)


def get_method(name: str | Method) -> Method:
    """The registered method called ``name``; RecipeError naming the accepted ones otherwise."""
    if isinstance(name, Method):
        return name
    cls = _REGISTRY.get(name)
    if cls is None:
        raise RecipeError(f"method {name!r} is unknown; accepted: {', '.join(_REGISTRY)}")
    return cls(name)


class _MaskThenRound(Method):
    """A mask chosen first, then round-to-nearest of the kept weights per group."""

    def mask(self, weight: torch.Tensor, pattern: Pattern, hessian) -> torch.Tensor:
        raise NotImplementedError

    def compress(self, weight, pattern, spec, hessian) -> LayerResult:
        keep = self.mask(weight, pattern, hessian)
        if spec is None:
            return LayerResult(weight * keep, keep, None, None)
        out, k = weight.shape
        group = k if spec.group_size == -1 else spec.group_size
        scales, zeros = group_params((weight * keep).reshape(out, k // group, group), spec)
        return LayerResult(weight * keep, keep, scales, zeros)


@register("magnitude", "rtn", "magnitude+rtn")
class Magnitude(_MaskThenRound):
    def __init__(self, name: str = "magnitude"):
        super().__init__(name, "magnitude", "rtn")

    @property
    def needs_calibration(self) -> bool:
        return False

    def mask(self, weight, pattern, hessian):
        return magnitude_mask(weight, pattern)


def _diagonal(hessian) -> torch.Tensor:
    if isinstance(hessian, InverseHessian):
        return hessian.diag_h
    return hessian if hessian.dim() == 1 else torch.diag(hessian)


@register("wanda", "wanda+rtn")
class Wanda(_MaskThenRound):
    """Wanda scores ``|w| * ||x||``; it needs only the Hessian's diagonal (squared input norms)."""

    def __init__(self, name: str = "wanda"):
        super().__init__(name, "wanda", "rtn")

    def mask(self, weight, pattern, hessian):
        return wanda_mask(weight, _diagonal(hessian), pattern)


class _Obs(Method):
    @property
    def compensates(self) -> bool:
        return True

    def prepare(self, hessian, pattern, spec, damp, act_order):
        if hessian is None or isinstance(hessian, InverseHessian) or not self._uses_obs(spec):
            return hessian
        return prepare_hessian(hessian, damp, act_order and self._reorders(pattern))

    def _uses_obs(self, spec: QuantSpec | None) -> bool:
        return True

    def _reorders(self, pattern: Pattern) -> bool:
        return True


@register("sparsegpt", "sparsegpt+joint")
class SparseGPT(_Obs):
    """N:M masks chosen in the OBS loop, values quantized in the same loop (joint)."""

    def __init__(self, name: str = "sparsegpt"):
        super().__init__(name, "sparsegpt", "joint")

    def _reorders(self, pattern):
        # SparseGPT picks N:M masks as it walks the columns, so it keeps their natural order.
        return pattern.is_dense

    def compress(self, weight, pattern, spec, hessian):
        r = obs_compress(weight, hessian, pattern, spec, select=not pattern.is_dense)
        return LayerResult(r.weight, r.keep, r.scales, r.zeros)


class _MaskThenGptq(_Obs):
    """A mask chosen first, then GPTQ over the kept weights; pruning only (no spec) is the mask alone."""

    mask_method: type[_MaskThenRound]

    def _uses_obs(self, spec):
        return spec is not None

    def compress(self, weight, pattern, spec, hessian):
        keep = self.mask_method().mask(weight, pattern, hessian)
        if spec is None:
            return LayerResult(weight * keep, keep, None, None)
        r = obs_compress(weight, hessian, pattern, spec, keep=keep)
        return LayerResult(r.weight, r.keep, r.scales, r.zeros)


@register("gptq", "magnitude+gptq")
class Gptq(_MaskThenGptq):
    mask_method = Magnitude

    def __init__(self, name: str = "gptq"):
        super().__init__(name, "magnitude", "gptq")


@register("wanda+gptq")
class WandaGptq(_MaskThenGptq):
    mask_method = Wanda

    def __init__(self, name: str = "wanda+gptq"):
        super().__init__(name, "wanda", "gptq")


def compress_layer(weight: torch.Tensor, pattern: Pattern, spec: QuantSpec | None, method: Method,
                   hessian: torch.Tensor | InverseHessian | None = None, damp: float = 0.01,
                   act_order: bool = False) -> LayerResult:
    """Prune and (unless ``spec`` is None) quantize a padded weight ``[out, K]``.

    ``hessian`` is ``X^T X`` of the layer's padded calibration inputs
    ``[K, K]`` (or ``method.prepare`` of it, to share the inversion between
    layers; or, for Wanda + RTN, only its diagonal ``[K]``); required when the
    method needs calibration. With ``spec`` None only the mask (and, for
    SparseGPT, the OBS update) is applied: the pruning-only rows of the
    accuracy table.
    """
    if method.needs_calibration and hessian is None:
        raise RecipeError(f"method {method.name} needs calibration inputs; accepted: calibration data "
                          "(nmq compress --calibration FILE, or the default corpus)")
    return method.compress(weight, pattern, spec, method.prepare(hessian, pattern, spec, damp, act_order))
