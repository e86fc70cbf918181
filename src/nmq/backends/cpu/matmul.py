"""The ``cpu`` backend: C++ kernels (``nmq.kernels.cpu._nmq_cpu``) with runtime ISA dispatch.

:meth:`CpuBackend.prepack` builds a weight's layout once (:mod:`.layout`: a
fast one for 4-bit 2:4, 4:8, 1:4 and dense weights, the canonical bytes for
every other); the ISA level and thread count are set as :mod:`.ext` says,
and its functions are re-exported here.

>>> import torch, nmq
>>> from nmq.backends import get_backend
>>> t = nmq.compress_weight(torch.randn(32, 256), pattern="2:4", group_size=128)
>>> cpu = get_backend("cpu")
>>> x = torch.randn(3, 256)
>>> y = cpu.matmul(x, cpu.prepack(t), "w4a8")
>>> bool(torch.equal(y, nmq.matmul(x, t, backend="reference", path="w4a8")))
True
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ...errors import BackendError
from ...format.spec import dtype_name
from ...format.tensor import NMQTensor
from ..base import Backend, check_path
from . import ext, gemm, layout
from .ext import (
    ISA_ENV,
    apply_env,
    get_isa,
    get_threads,
    isa_levels,
    native,
    require,
    set_isa,
    set_threads,
)
from .layout import FastParams, GenericParams, fast_kind

INT32_MAX = 2**31 - 1
_DIRECT_DTYPES = (torch.float32, torch.bfloat16)  # dtypes the kernels read and write as they are
# From this many tokens on, a float call dequantizes the weight into the thread's fp32 workspace and runs one
# dense GEMM over it (oneDNN's, :mod:`.gemm`): a GEMM tuned for large matrices beats the kernels there, 2:4's
# tile kernel included. The dequantized values are the reference's (bit for bit), the weight itself stays
# packed, and building the dense form costs about 2% of the GEMM at 1024 tokens (AVX-512, 2:4)
# (`nmq bench kernels --batch 64,256,1024,4096` measures both).
GEMM_TOKENS = 1024


@dataclass(eq=False)
class CpuPacked:
    """A weight in the cpu backend's own layout (fast or generic)."""

    shape: tuple[int, int]
    params: FastParams | GenericParams
    buffers: tuple[torch.Tensor, ...]
    max_abs_weight: int
    group: int  # the format's group length along K (bounds the W4A8 partial sums)
    handle: object = None  # the extension's FastWeight/GenericWeight over the buffers

    def __post_init__(self) -> None:
        if self.handle is None:
            cls = native.FastWeight if self.fast else native.GenericWeight
            self.handle = cls(*self.buffers, layout.to_native(self.params))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "handle"}

    def __setstate__(self, state):
        self.__dict__.update(state, handle=None)
        self.__post_init__()

    @property
    def k_stride(self) -> int:
        """Columns of the layout's dense form (``in_features`` padded as the layout pads K)."""
        return self.params.kk if self.fast else self.params.padded_in

    @property
    def fast(self) -> bool:
        return isinstance(self.params, FastParams)

    @property
    def groups(self) -> int:
        return self.params.groups

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def copy(self) -> CpuPacked:
        """An independent copy, in its own (huge-page) memory like the original."""
        bufs = self.buffers[:4]
        own = layout.hugepage_copy(bufs)
        if own is bufs:  # small layouts stay where they are: clone them
            own = tuple(b.clone() for b in bufs)
        return CpuPacked(self.shape, self.params, own + self.buffers[4:], self.max_abs_weight, self.group)

    @property
    def nbytes(self) -> int:
        """Bytes held by the layout (the rank table is shared per pattern and not counted)."""
        return sum(b.numel() * b.element_size() for b in self.buffers[:4])


class CpuBackend(Backend):
    name = "cpu"
    device = "cpu"

    def unavailable_reason(self) -> str | None:
        return ext.unavailable_reason()

    def unsupported_reason(self, t: NMQTensor) -> str | None:
        if t.is_float:
            return ("its kernels decode integer codes (2, 3, 4 or 8 bits), not 16-bit float values "
                    f"({dtype_name(t.value_dtype)})")
        return None

    def prepack(self, t: NMQTensor) -> CpuPacked:
        require()
        if isinstance(t, CpuPacked):
            return t
        self.check_supported(t)
        params, bufs = layout.prepack(t)
        return CpuPacked(tuple(t.shape), params, bufs, _max_abs_weight(t), t.group)

    def matmul(self, x: torch.Tensor, packed: CpuPacked, path: str = "w4a16") -> torch.Tensor:
        return _run(x, packed, path, partials=False)[0]

    def bind(self, packed: CpuPacked, path: str = "w4a16"):
        """A call ``x [tokens, in] -> y`` in ``x``'s dtype for this weight and path. Checked once here; per
        call only what can change (the input), and bf16 outputs are rounded in the extension, so a batch-1
        call costs a few microseconds of Python."""
        try:
            w4a8 = _check_call(packed, path)
        except BackendError:
            return super().bind(packed, path)  # matmul raises the same error at the call
        handle, k, out = packed.handle, packed.in_features, packed.out_features

        def run(x: torch.Tensor) -> torch.Tensor:
            if not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == k and x.device.type == "cpu"
                    and x.dtype in _DIRECT_DTYPES):
                return self.matmul(x, packed, path).to(x.dtype)  # other dtypes, or the precise error
            if not w4a8 and x.shape[0] >= GEMM_TOKENS:
                return dense_gemm(x, packed).to(x.dtype)
            apply_env()
            xa = x.contiguous()
            y = torch.empty(x.shape[0], out, dtype=x.dtype)
            bf16 = x.dtype == torch.bfloat16
            handle.run(xa.data_ptr(), bf16, x.shape[0], w4a8, y.data_ptr(), 0, bf16)
            return y

        return run

    def stack_rows(self, parts: list[CpuPacked]) -> tuple[CpuPacked, list[CpuPacked]] | None:
        """Fast layouts of one geometry whose row counts (but the last) are multiples of 16: the layouts are
        row-block major, so stacking is concatenation, and each part is a slice of the result."""
        if not all(isinstance(p, CpuPacked) for p in parts) or not layout.stackable([p.params for p in parts]):
            return None
        params, bufs, views = layout.stack([p.params for p in parts], [p.buffers for p in parts])
        first = parts[0]
        whole = CpuPacked((params.out, first.in_features), params, bufs, max(p.max_abs_weight for p in parts),
                          first.group)
        return whole, [CpuPacked(p.shape, p.params, v, p.max_abs_weight, p.group) for p, v in zip(parts, views)]


def partial_sums(x: torch.Tensor, packed: CpuPacked | NMQTensor) -> torch.Tensor:
    """The kernel's exact W4A8 partial sums, int32 ``[tokens, out, groups]``.

    Comparable bit for bit with :func:`nmq.backends.reference.partial_sums`.
    """
    if isinstance(packed, NMQTensor):
        packed = CpuBackend().prepack(packed)
    return _run(x, packed, "w4a8", partials=True)[1]


def dequantize(packed: CpuPacked, out: torch.Tensor | None = None) -> torch.Tensor:
    """The weight of ``packed`` dequantized, fp32 ``[out, in]`` (a view of its padded dense form, in ``out``
    when given: a contiguous fp32 buffer of at least that many elements): the reference's values bit for
    bit, decoded from the layout (on the calling thread, or on the kernels' threads for weights of 4M and more)."""
    require()
    apply_env()
    n = packed.out_features * packed.k_stride
    if out is None:
        out = torch.empty(n, dtype=torch.float32)
    elif not (out.dtype == torch.float32 and out.is_contiguous() and out.numel() >= n):
        raise BackendError(f"dequantize needs a contiguous float32 buffer of {n} elements")
    w = out[:n].view(packed.out_features, packed.k_stride)
    packed.handle.dequantize(w.data_ptr())
    return w[:, : packed.in_features]


class _Workspace(threading.local):
    """The fp32 buffers a thread's GEMM-path calls dequantize into, kept between calls: a fresh one per call
    costs a page fault per 4 KiB (a 180 MB LLaMA-7B MLP weight: 44k of them, a good part of the GEMM)."""

    def __init__(self) -> None:
        self.bufs: dict[str, torch.Tensor] = {}

    def take(self, n: int, which: str = "padded") -> torch.Tensor:
        buf = self.bufs.get(which)
        if buf is None or buf.numel() < n:
            buf = self.bufs[which] = torch.empty(n, dtype=torch.float32)
        return buf


_workspace = _Workspace()


def dense_gemm(x: torch.Tensor, packed: CpuPacked) -> torch.Tensor:
    """``x @ dequant(W).T`` as one fp32 GEMM over the weight dequantized into the thread's workspace (fp32
    out). The workspace holds the largest weight dequantized so far, for as long as the thread lives."""
    out, k, ks = packed.out_features, packed.in_features, packed.k_stride
    w = dequantize(packed, _workspace.take(out * ks))
    if ks != k:
        # Rows padded past K (576 to 640 for a group of 128): a contiguous copy of the weight costs less than
        # the GEMM's 11% of extra work over the padding (1536x576, 4096 tokens: 17.9 ms against 20.1 ms) and
        # far less than oneDNN on a strided weight.
        w = _workspace.take(out * k, "dense")[: out * k].view(out, k).copy_(w)
    return gemm.linear(x.to(torch.float32), w)


def _max_abs_weight(t: NMQTensor) -> int:
    return (1 << t.bits) - 1 if not t.symmetric else 1 << (t.bits - 1)


def _check_x(x: torch.Tensor, packed: CpuPacked) -> torch.Tensor:
    k = packed.in_features
    if not isinstance(x, torch.Tensor):
        raise BackendError(f"activations are a {type(x).__name__}; accepted: a torch tensor [tokens, {k}]")
    if x.dim() != 2:
        raise BackendError(f"activations have shape {list(x.shape)}; accepted: [tokens, {k}]")
    if x.shape[1] != k:
        raise BackendError(f"activations have {x.shape[1]} features; the weight {list(packed.shape)} expects {k}")
    if not x.is_floating_point():
        raise BackendError(f"activations have dtype {x.dtype}; accepted: float32, float16 or bfloat16")
    if x.device.type != "cpu":
        raise BackendError(f"activations are on {x.device}; the cpu backend takes CPU tensors")
    return x


def _check_call(packed: CpuPacked, path: str) -> bool:
    """What a call on ``packed`` needs besides its input; whether it runs W4A8."""
    require()
    check_path(path)
    if not isinstance(packed, CpuPacked):
        raise BackendError(f"the cpu backend got a {type(packed).__name__}; pass what CpuBackend.prepack returned")
    w4a8 = path == "w4a8"
    if w4a8 and packed.group * packed.max_abs_weight * 127 > INT32_MAX:
        raise BackendError(
            f"a W4A8 partial sum of weight {list(packed.shape)} could overflow int32 (group of {packed.group}); "
            "use a smaller group size")
    return w4a8


def _run(x: torch.Tensor, packed: CpuPacked, path: str, partials: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    w4a8 = _check_call(packed, path)
    x = _check_x(x, packed)
    if not (w4a8 or partials) and x.shape[0] >= GEMM_TOKENS:
        return dense_gemm(x, packed), None
    apply_env()
    bf16 = x.dtype == torch.bfloat16
    xa = x.contiguous() if bf16 else x.to(torch.float32).contiguous()
    tokens = x.shape[0]
    y = torch.empty(tokens, packed.out_features, dtype=torch.float32)
    p = torch.empty(tokens, packed.out_features, packed.groups, dtype=torch.int32) if partials else None
    # The extension takes addresses: xa, y and p are contiguous CPU tensors of
    # the shapes it expects, and stay alive for the call.
    packed.handle.run(xa.data_ptr(), bf16, tokens, w4a8, y.data_ptr(), p.data_ptr() if partials else 0, False)
    return y, p


__all__ = ["ISA_ENV", "CpuBackend", "CpuPacked", "fast_kind", "get_isa", "get_threads", "isa_levels", "partial_sums",
           "set_isa", "set_threads"]
