"""Group-wise integer quantization of weights (RTN) and of activations (int8).

Weights: codes ``c`` in ``0 .. 2**bits - 1`` with an fp16 scale per group.
Symmetric codes mean ``(c - 2**(bits-1)) * scale`` with
``scale = absmax / (2**(bits-1) - 1)``; asymmetric ones mean
``(c - zero) * scale`` with ``scale = (max - min) / (2**bits - 1)`` over a range
that always includes 0, so a zero weight stays exactly zero. Rounding is half
to even. Scales are rounded to fp16 *before* the codes are computed, so
dequantization reproduces exactly what the codes were chosen against. A
symmetric scale is the fp16 number next below ``absmax / qmax`` when the
largest magnitude still rounds to ``qmax`` with it, else the one next above;
an asymmetric scale is rounded up. Either way no value of a group clamps and
every error is at most half a step, and compressing a compressed symmetric
weight again gives it back (its largest code is ``qmax``, so the same scale
comes out; exactly so while scales stay above ``(2 qmax + 1) * 2**-24``, where
fp16's steps become too coarse).

Activations (the W4A8 path, DESIGN.md section 3): int8 per (token, group),
``scale = absmax / 127`` in fp32 and ``q = round_half_even(x / scale)``.

>>> import torch
>>> spec = QuantSpec(bits=4, group_size=4, symmetric=True)
>>> w = torch.tensor([[0.7, -0.35, 0.0, 0.1]])
>>> codes, scales, zeros = quantize_groups(w.reshape(1, 1, 4), spec)
>>> codes.tolist(), zeros
([[[15, 4, 8, 9]]], None)
>>> from nmq.format.spec import dequantize_groups
>>> dequantize_groups(codes, scales, zeros, spec).tolist()
[[[0.6998291015625, -0.39990234375, 0.0, 0.0999755859375]]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import QuantError
from ..format.spec import QuantSpec

FP16_MAX = 65504.0


def quantize_groups(
    values: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``values [rows, groups, per_group]`` (fp32) group by group.

    Returns int32 codes of the same shape, fp16 scales ``[rows, groups]`` and,
    when asymmetric, int32 zero codes ``[rows, groups]`` (else None).
    """
    scales, zeros = group_params(values, spec)
    return quantize_with(values, scales, zeros, spec), scales, zeros


def group_params(values: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RTN scales (fp16) and zero codes (int32, asymmetric only) of ``values [rows, groups, per_group]``.

    Entries that are exactly zero never change the result (the range always
    includes 0), so pruned weights may be passed as zeros.
    """
    values = values.float()
    if spec.symmetric:
        return _symmetric_scale(values.abs().amax(dim=-1), spec.offset - 1), None
    lo = values.amin(dim=-1).clamp(max=0.0)
    hi = values.amax(dim=-1).clamp(min=0.0)
    scales = _to_fp16_scale((hi - lo) / spec.max_code)
    zeros = torch.round(-lo / _safe(scales)).clamp(0, spec.max_code)
    return scales, zeros.to(torch.int32)


def quantize_with(
    values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, spec: QuantSpec
) -> torch.Tensor:
    """int32 codes of ``values [rows, groups, per_group]`` for given scales and zeros ``[rows, groups]``."""
    s = _safe(scales).unsqueeze(-1)
    if zeros is None:
        q = torch.round(values.float() / s).clamp(-spec.offset, spec.offset - 1) + spec.offset
        zero = torch.full_like(q, spec.offset)
    else:
        zero = zeros.unsqueeze(-1).float().expand_as(values)
        q = (torch.round(values.float() / s) + zero).clamp(0, spec.max_code)
    return torch.where(scales.unsqueeze(-1) == 0, zero, q).to(torch.int32)


@dataclass(frozen=True)
class GroupGrid:
    """One quantization group's grid ``[rows]``, set up once for all the group's columns.

    ``round(v)`` for one value per row is ``dequantize_groups(quantize_with(v))``
    in the same arithmetic, without re-deriving divisors per call: the OBS
    loop quantizes one column at a time.
    """

    divisor: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: QuantSpec

    @classmethod
    def of(cls, scales: torch.Tensor, zeros: torch.Tensor | None, spec: QuantSpec) -> GroupGrid:
        return cls(_safe(scales), scales.float(), None if zeros is None else zeros.float(), spec)

    def round(self, v: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self.zero is None:
            return torch.round(v / self.divisor).clamp_(-spec.offset, spec.offset - 1) * self.scale
        return ((torch.round(v / self.divisor) + self.zero).clamp_(0, spec.max_code) - self.zero) * self.scale


def quantize_activations(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of ``x [tokens, K]`` per (token, group of K).

    ``K`` must be a multiple of ``group_size``. Returns int8 ``q [tokens, K]``
    and fp32 ``scales [tokens, K // group_size]``.
    """
    tokens, k = x.shape
    g = x.float().reshape(tokens, k // group_size, group_size)
    scales = g.abs().amax(dim=-1) / 127.0
    q = torch.round(g / _safe(scales).unsqueeze(-1)).clamp(-127, 127)
    q = torch.where(scales.unsqueeze(-1) == 0, torch.zeros_like(q), q)
    return q.to(torch.int8).reshape(tokens, k), scales


def _to_fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales *up* to fp16, so the largest magnitude of a group never clamps."""
    if scale.numel() and scale.max() > FP16_MAX:
        raise QuantError(
            f"a quantization scale of {scale.max().item():.4g} overflows fp16 (max {FP16_MAX}); "
            "accepted: weights whose group range fits fp16 scales"
        )
    s16 = scale.to(torch.float16)
    low = s16.float() < scale
    # For positive finite fp16, the next larger value is the next bit pattern.
    bumped = (s16.view(torch.int16) + 1).view(torch.float16)
    return torch.where(low, bumped, s16)


def _symmetric_scale(amax: torch.Tensor, qmax: int) -> torch.Tensor:
    """fp16 scales for largest magnitudes ``amax``: next below ``amax / qmax`` if ``amax`` still rounds to
    ``qmax`` (fp32 division, as the quantizer does), else next above."""
    exact = amax / qmax
    up = _to_fp16_scale(exact)
    near = exact.to(torch.float16)
    # For positive finite fp16, the next smaller value is the previous bit pattern.
    down = torch.where(near.float() > exact, (near.view(torch.int16) - 1).view(torch.float16), near)
    fits = (down > 0) & (amax / down.float() < qmax + 0.5)  # a zero scale never fits
    return torch.where(fits, down, up)


def _safe(scales: torch.Tensor) -> torch.Tensor:
    """Scales as fp32 with zeros replaced by one, so divisions stay finite."""
    s = scales.float()
    return torch.where(s == 0, torch.ones_like(s), s)
