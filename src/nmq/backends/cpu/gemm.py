"""Dense fp32 GEMMs on the CPU through oneDNN, where PyTorch has it.

PyTorch sends an fp32 ``linear`` to MKL, whose x86 kernels outside Intel's
CPUs are its AVX2 ones: on this AMD EPYC (AVX-512 throughout) 150-175 GFLOP/s
on two cores at SmolLM2 and LLaMA shapes, against 340-395 GFLOP/s for
oneDNN's AVX-512 kernel (which PyTorch links too, and which picks its code by
the CPU's features), at every token count from 1 to 4096. The arithmetic is
IEEE fp32 in both, only the order of the sums differs. nmq's GEMM path
(:func:`nmq.backends.cpu.matmul.dense_gemm`) and :func:`fp32_linears` (dense
models' layers in ``nmq eval``) use it; ``nmq bench kernels`` has both
``torch-fp32`` (MKL, what PyTorch does) and ``onednn-fp32`` rows.

>>> import torch
>>> x, w = torch.randn(5, 64), torch.randn(32, 64)
>>> bool(torch.allclose(linear(x, w), x @ w.T, rtol=1e-5, atol=1e-5))
True
>>> with fp32_linears():
...     y = torch.nn.Linear(64, 32)(x)
>>> y.shape
torch.Size([5, 32])
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@functools.cache
def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ weight.T + bias`` (``input [..., in]``, ``weight [out, in]``, either may be a strided view; the
    arguments of ``F.linear``): fp32 CPU calls through oneDNN where available, others by ``F.linear`` itself."""
    if onednn_available() and _onednn_can(input, weight, bias):
        return _onednn(input, weight, bias)
    return F.linear(input, weight, bias)


def _onednn(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # a strided weight takes a slow path inside oneDNN (a 1536x576 view of rows 640 apart: 5.8 s at 512 tokens,
    # 4 ms contiguous): a copy costs far less
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w.contiguous(), bias, "none", [], "")


def _onednn_can(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> bool:
    ts = (x, w) if bias is None else (x, w, bias)
    # oneDNN's op has no backward: with autograd recording, PyTorch's own linear
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return False
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ts)
            and x.dim() >= 2 and x.numel() > 0 and w.dim() == 2)


class fp32_linears(TorchFunctionMode):
    """Within this context, every ``linear`` call goes to :func:`linear`: fp32 CPU calls that autograd does not
    record (every ``nn.Linear`` of a dense model under ``torch.no_grad``) run on oneDNN, the others as before.
    A Python hook on each op of a forward: meant for batched work (evaluation, prefill), where it costs far less
    than the GEMMs gain."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            # the mode is off inside its own handler, so linear's fallback is PyTorch's linear itself
            return linear(*args, **kwargs)
        return func(*args, **kwargs)
