"""The ``cusparselt`` backend: 2:4 weights on NVIDIA sparse tensor cores via PyTorch.

``prepack`` dequantizes the INT4 (or INT8) codes once to fp16 (bf16 as well,
built on first use from the compressed weight) with the 2:4 pattern kept,
pads the weight with zero rows/columns to the shapes the sparse kernels take,
and compresses it with :func:`torch.sparse.to_sparse_semi_structured`
(cuSPARSELt when PyTorch has it, else PyTorch's CUTLASS 2:4 kernels; which
one is recorded in the packed weight). ``matmul`` runs ``F.linear`` on the
semi-structured weight; fp32 activations are cast to fp16. Only 2:4 and the
``w4a16`` path; sparse tensor cores need compute capability 8.0 or newer.

Padding: out to a multiple of 32 and K to a multiple of 64 (the strictest of
PyTorch's cuSPARSELt and CUTLASS constraints for fp16/bf16). Padding the
weight costs nothing per call; activations are padded per call only when K
is not already a multiple of 64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import BackendError
from ..format.pattern import Pattern
from ..format.tensor import NMQTensor
from .base import Backend, check_input, check_path

ROW_MULTIPLE = 32
COL_MULTIPLE = 64
PATTERN_24 = Pattern(2, 4)
WEIGHT_DTYPES = (torch.float16, torch.bfloat16)


def check_weight(t: NMQTensor) -> None:
    """Raise unless ``t`` can run on 2:4 sparse tensor cores."""
    if t.pattern != PATTERN_24:
        raise BackendError(
            f"backend 'cusparselt' runs 2:4 weights only; this weight is {t.pattern} "
            f"(use backend 'triton' for other N:M patterns)"
        )


def padded_shape(out: int, k: int) -> tuple[int, int]:
    return (-(-out // ROW_MULTIPLE) * ROW_MULTIPLE, -(-k // COL_MULTIPLE) * COL_MULTIPLE)


def semi_structured_dense(t: NMQTensor, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized 2:4 weight, zero-padded to the sparse kernels' shape, on the CPU.

    Every M-group keeps exactly the two stored positions (a stored zero code
    still counts), so the result is 2:4 in every group of four, padding included.
    """
    check_weight(t)
    out, k = t.out_features, t.in_features
    rows, cols = padded_shape(out, k)
    dense = torch.zeros(rows, cols, dtype=torch.float32)
    dense[:out, :k] = t.to_dense()
    return dense.to(dtype)


def sparse_kernel_name() -> str:
    try:
        if torch.backends.cusparselt.is_available():
            return "cusparselt"
    except AttributeError:  # older builds without the module
        pass
    return "cutlass"


def semi_structured_bytes(s) -> int:
    """Bytes a forward product reads from a semi-structured tensor: its compressed values and metadata
    (the transposed copies PyTorch may keep for the backward pass are not read)."""
    parts = [getattr(s, n, None) for n in ("packed", "meta")] if getattr(s, "packed", None) is not None else []
    got = sum(t.numel() * t.element_size() for t in parts if t is not None)
    if got:
        return got
    rows, cols = s.shape
    return rows * cols + rows * cols // 8  # half the values in fp16, 2-bit indices for them


@dataclass
class SemiStructuredWeight:
    """A 2:4 weight compressed for sparse tensor cores, one copy per activation dtype."""

    source: NMQTensor
    out_features: int
    in_features: int
    padded_in: int
    kernel: str
    by_dtype: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        """Bytes one matmul reads: the compressed copy of each activation dtype built so far."""
        return sum(semi_structured_bytes(w) for w in self.by_dtype.values())

    def weight(self, dtype: torch.dtype):
        w = self.by_dtype.get(dtype)
        if w is None:
            from torch.sparse import (
                SparseSemiStructuredTensor,
                to_sparse_semi_structured,
            )

            SparseSemiStructuredTensor._FORCE_CUTLASS = self.kernel == "cutlass"
            dense = semi_structured_dense(self.source, dtype).cuda()
            w = self.by_dtype[dtype] = to_sparse_semi_structured(dense)
            del dense
        return w


class CusparseltBackend(Backend):
    name = "cusparselt"
    device = "cuda"

    def unavailable_reason(self) -> str | None:
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return f"2:4 sparse tensor cores need compute capability 8.0 or newer; this GPU is {major}.{minor}"
        return None

    def unsupported_reason(self, t: NMQTensor) -> str | None:
        if t.pattern != PATTERN_24:
            return f"it runs 2:4 weights only, not {t.pattern}"
        return None

    def prepack(self, t: NMQTensor) -> SemiStructuredWeight:
        t.validate()
        check_weight(t)
        reason = self.unavailable_reason()
        if reason:
            raise BackendError(f"backend 'cusparselt' is not available here: {reason}")
        packed = SemiStructuredWeight(t, t.out_features, t.in_features,
                                      padded_shape(t.out_features, t.in_features)[1], sparse_kernel_name())
        packed.weight(torch.float16)
        return packed

    def matmul(self, x: torch.Tensor, packed: SemiStructuredWeight, path: str = "w4a16") -> torch.Tensor:
        check_path(path)
        if path != "w4a16":
            raise BackendError(f"backend 'cusparselt' runs the w4a16 path only; for {path} use 'reference' or 'cpu'")
        check_input(x, packed)
        dtype = x.dtype if x.dtype in WEIGHT_DTYPES else torch.float16
        xd = x.to(device="cuda", dtype=dtype)
        if packed.padded_in != packed.in_features:
            xd = torch.nn.functional.pad(xd, (0, packed.padded_in - packed.in_features))
        y = torch.nn.functional.linear(xd, packed.weight(dtype))
        return y[:, : packed.out_features].float().to(x.device)
