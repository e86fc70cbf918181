"""The ``triton`` backend: fused W4A16 kernels reading the compressed weight directly.

Dense weights (N == M) run :mod:`nmq.kernels.triton.dense_int4`, every other
N:M pattern (M <= 16) :mod:`nmq.kernels.triton.nm_int4`; both dequantize in
registers and accumulate in fp32 on tensor cores (fp16/bf16 activations; fp32
activations take full-precision fp32 dots). ``prepack`` keeps the packed codes,
re-encodes the metadata as ``index`` and moves the fields to the GPU; no dense
weight exists at any point.

With ``TRITON_INTERPRET=1`` the same kernels run through Triton's interpreter
on CPU tensors: that is how they are tested without a GPU (slow; for tests).
Only the ``w4a16`` numeric path is implemented here; ``w4a8`` is served by
the ``reference`` and ``cpu`` backends.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..errors import BackendError
from ..format.spec import SUPPORTED_BITS, dtype_name
from ..format.tensor import NMQTensor
from .base import Backend, check_input, check_path

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonBackend(Backend):
    name = "triton"
    device = "cuda"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (pip install triton)"
        if not (interpreting() or torch.cuda.is_available()):
            return "no CUDA device is visible (TRITON_INTERPRET=1 runs the kernels on CPU tensors, for tests)"
        return None

    def _kernels(self):
        reason = self.unavailable_reason()
        if reason:
            raise BackendError(f"backend 'triton' is not available here: {reason}")
        from ..kernels.triton import launch

        return launch

    def unsupported_reason(self, t: NMQTensor) -> str | None:
        # The kernels decode every integer width of the format (launch.SUPPORTED_BITS, which needs triton).
        if t.bits not in SUPPORTED_BITS:
            what = f"16-bit float values ({dtype_name(t.value_dtype)})" if t.is_float else f"{t.bits}-bit codes"
            return f"its kernels decode {', '.join(map(str, SUPPORTED_BITS))}-bit integer codes, not {what}"
        return None

    def prepack(self, t: NMQTensor):
        launch = self._kernels()
        self.check_supported(t)
        device = "cpu" if launch.INTERPRET or not torch.cuda.is_available() else "cuda"
        return launch.pack_weight(t, device)

    def matmul(self, x: torch.Tensor, packed, path: str = "w4a16") -> torch.Tensor:
        check_path(path)
        if path != "w4a16":
            raise BackendError(
                f"backend 'triton' runs the w4a16 path only; for {path} use backend 'reference' or 'cpu'"
            )
        launch = self._kernels()
        check_input(x, packed)
        if x.dtype not in ACTIVATION_DTYPES:
            raise BackendError(f"activations have dtype {x.dtype}; accepted: float16, bfloat16 or float32")
        device = packed.values.device
        y = launch.triton_matmul(x.to(device), packed)
        return y.to(x.device)
