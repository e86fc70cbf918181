"""QuantSpec: how kept weights are quantized, and what their codes mean.

Symmetric codes ``c`` in ``0 .. 2**bits - 1`` mean ``(c - 2**(bits-1)) * scale``;
asymmetric ones ``(c - zero) * scale`` with a per-group zero code (DESIGN.md
section 2). Choosing scales and codes is compression's business
(:mod:`nmq.compress.quant`); this module only decodes them.

``bits == 16`` (:data:`FLOAT_BITS`) is the one width that is not a code: the
kept values are 16-bit floats (``VALUE_DTYPES``), their IEEE bit patterns
stored as 16-bit codes, without scales or zeros (a pruned, unquantized weight).

>>> import torch
>>> spec = QuantSpec(bits=4, group_size=4, symmetric=True)
>>> dequantize_groups(torch.tensor([[[15, 4, 8, 9]]]), torch.tensor([[0.1]], dtype=torch.float16), None, spec).tolist()
[[[0.6998291015625, -0.39990234375, 0.0, 0.0999755859375]]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import QuantError

SUPPORTED_BITS = (2, 3, 4, 8)
FLOAT_BITS = 16
# The 16-bit float types kept values may be stored as, by their header name.
VALUE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class QuantSpec:
    """How kept weights are quantized: width, group along K (dense coords), symmetry."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise QuantError(f"bits={self.bits} is not supported; accepted: {', '.join(map(str, SUPPORTED_BITS))}")
        if not (self.group_size == -1 or self.group_size >= 1):
            raise QuantError(f"group size {self.group_size} is invalid; accepted: a positive multiple of M, or -1 (one group per row)")

    @property
    def offset(self) -> int:
        """The code that means zero in the symmetric encoding."""
        return 1 << (self.bits - 1)

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1


def dequantize_groups(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, spec: QuantSpec
) -> torch.Tensor:
    """fp32 values of ``codes [rows, groups, per_group]``."""
    zero = spec.offset if zeros is None else zeros.unsqueeze(-1)
    return (codes.to(torch.int32) - zero).float() * scales.float().unsqueeze(-1)


def dtype_name(dtype: torch.dtype) -> str:
    """The header name of a 16-bit value dtype (``float16`` / ``bfloat16``)."""
    return str(dtype).removeprefix("torch.")


def decode_floats(codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 values of 16-bit codes (int32, ``0 .. 2**16 - 1``) read as the bit patterns of ``dtype``."""
    signed = torch.where(codes >= 1 << 15, codes - (1 << 16), codes)
    return signed.to(torch.int16).view(dtype).float()


def encode_floats(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int32 16-bit codes (``0 .. 2**16 - 1``) of ``values`` rounded to ``dtype``: its bit patterns."""
    return values.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
