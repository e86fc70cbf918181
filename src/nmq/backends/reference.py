"""The reference backend: the numerics contract (DESIGN.md section 3), written plainly.

It is the oracle every other backend and the RTL are checked against: short,
obviously right, slow.

* ``w4a16``: ``y = x @ dequant(W).T`` in fp32. A weight of 16-bit float values
  (bits 16) is prepacked as its dense form in that dtype (exact): the backend
  ``auto`` runs such weights on, where decoding the format at every call
  would cost more than the matmul.
* ``w4a8``: activations quantized per (token, group) to int8
  (:func:`nmq.compress.quant.quantize_activations`); for every (token, row, group) the
  partial sum ``P = sum((c_w - z) * q_x)`` exact in int32 (:func:`partial_sums`);
  ``y = sum_g (s_w[g] * s_x[g]) * P[g]`` accumulated over ascending g in fp32
  (:func:`w4a8_epilogue`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compress.quant import quantize_activations
from ..errors import BackendError
from ..format.spec import dtype_name
from ..format.tensor import NMQTensor
from .base import Backend, check_input, check_path

INT32_MAX = 2**31 - 1


@dataclass(eq=False)
class DenseValues:
    """A weight of 16-bit float values, prepacked: ``dense [out, in]`` in the values' dtype."""

    source: NMQTensor
    dense: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    @property
    def in_features(self) -> int:
        return self.source.in_features

    @property
    def out_features(self) -> int:
        return self.source.out_features


class ReferenceBackend(Backend):
    name = "reference"

    def prepack(self, t: NMQTensor) -> NMQTensor | DenseValues:
        t.validate()
        return DenseValues(t, t.to_dense(t.value_dtype)) if t.is_float else t

    def matmul(self, x: torch.Tensor, packed: NMQTensor | DenseValues, path: str = "w4a16") -> torch.Tensor:
        check_path(path)
        x = check_input(x, packed)
        if path == "w4a16":
            return x @ (packed.dense.float() if isinstance(packed, DenseValues) else packed.to_dense()).T
        t = packed.source if isinstance(packed, DenseValues) else packed
        if t.is_float:
            raise BackendError("the w4a8 path multiplies integer weight codes; this weight holds 16-bit float "
                               f"values ({dtype_name(t.value_dtype)}); accepted: path w4a16")
        return w4a8_matmul(x, t)


def integer_weight(t: NMQTensor) -> torch.Tensor:
    """``c_w - z`` at every kept position, zero elsewhere: int32 ``[out, padded_in]``."""
    out, groups = t.out_features, t.groups
    codes = t.codes().reshape(out, groups, -1) - t.zero_codes().unsqueeze(-1)
    dense = torch.zeros(out, t.padded_in, dtype=torch.int32)
    dense.scatter_(1, t.positions(), codes.reshape(out, -1))
    return dense


def quantized_activations(x: torch.Tensor, t: NMQTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 activations ``[tokens, padded_in]`` and fp32 scales ``[tokens, groups]`` for ``t``."""
    x = torch.nn.functional.pad(x.float(), (0, t.padded_in - t.in_features))
    return quantize_activations(x, t.group)


def partial_sums(x: torch.Tensor, t: NMQTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The W4A8 oracle: int32 ``P [tokens, out, groups]`` and activation scales ``[tokens, groups]``."""
    x = check_input(x, t)
    q, x_scales = quantized_activations(x, t)
    tokens, g = x.shape[0], t.group
    w = integer_weight(t).reshape(t.out_features, t.groups, g).double()
    # Every product and partial sum is an integer below 2**53: float64 is exact.
    p = torch.einsum("tgk,ogk->tog", q.reshape(tokens, t.groups, g).double(), w)
    if p.numel() and p.abs().max() > INT32_MAX:
        raise BackendError(f"a W4A8 partial sum of weight {list(t.shape)} overflows int32; use a smaller group size")
    return p.to(torch.int32), x_scales


def w4a8_epilogue(p: torch.Tensor, x_scales: torch.Tensor, t: NMQTensor) -> torch.Tensor:
    """fp32 ``y [tokens, out]`` from int32 ``P [tokens, out, groups]``: ``sum_g (s_w[g] * s_x[g]) * P[g]``, ascending g.

    Separate from :func:`w4a8_matmul` so whatever computes ``P`` elsewhere (the RTL) scales it in the same order.
    """
    w_scales = t.scales.float()
    y = torch.zeros(p.shape[0], t.out_features, dtype=torch.float32)
    for g in range(t.groups):
        y += (w_scales[:, g].unsqueeze(0) * x_scales[:, g].unsqueeze(1)) * p[:, :, g].float()
    return y


def w4a8_matmul(x: torch.Tensor, t: NMQTensor) -> torch.Tensor:
    p, x_scales = partial_sums(x, t)
    return w4a8_epilogue(p, x_scales, t)
