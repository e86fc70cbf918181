"""Backend registry: names to backends, and ``auto`` selection.

>>> import torch, nmq
>>> t = nmq.compress_weight(torch.randn(16, 128), group_size=64)
>>> y = nmq.matmul(torch.randn(3, 128), t, backend="reference", path="w4a8")
>>> y.shape
torch.Size([3, 16])

``auto`` takes, in order, the first backend available here for the device
that runs the weight's format: 16-bit float values (``bits=16``), which the
CPU and Triton kernels do not decode, run on ``reference`` (or on cuSPARSELt
when 2:4 on a GPU).
"""

from __future__ import annotations

import torch

from ..errors import BackendError
from ..format.tensor import NMQTensor
from .base import NUMERIC_PATHS, Backend, check_path
from .cpu.matmul import CpuBackend
from .cusparselt import CusparseltBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

KNOWN_BACKENDS = ("reference", "cpu", "triton", "cusparselt")
_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def get_backend(name: str = "auto", device: str = "cpu", batch: int = 1, weight: NMQTensor | None = None) -> Backend:
    """The backend called ``name``, or for ``auto`` the fastest available one; given the ``weight`` it is for,
    one that runs its format (``auto`` passes the others over, a named one that cannot raises BackendError)."""
    if name == "auto":
        return _auto(device, batch, weight)
    if name not in KNOWN_BACKENDS:
        raise BackendError(f"backend {name!r} is unknown; accepted: auto, {', '.join(KNOWN_BACKENDS)}")
    backend = _REGISTRY.get(name)
    if backend is None:
        raise BackendError(f"backend {name!r} is not available in this nmq build; available: {', '.join(available())}")
    reason = backend.unavailable_reason()
    if reason:
        raise BackendError(f"backend {name!r} is not available here: {reason}")
    if isinstance(weight, NMQTensor):
        backend.check_supported(weight)
    return backend


def available() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [n for n, b in _REGISTRY.items() if b.unavailable_reason() is None]


def _auto(device: str, batch: int, weight: NMQTensor | None = None) -> Backend:
    order = ("triton", "cusparselt", "reference") if device.startswith("cuda") else ("cpu", "reference")
    for name in order:
        backend = _REGISTRY.get(name)
        if backend is None or backend.unavailable_reason() is not None or backend.device != device.split(":")[0]:
            continue
        if isinstance(weight, NMQTensor) and backend.unsupported_reason(weight):
            continue  # a format its kernels do not decode (16-bit float values): the next one in order
        return backend
    return _REGISTRY["reference"]


def matmul(x: torch.Tensor, t: NMQTensor, backend: str = "auto", path: str = "w4a16") -> torch.Tensor:
    """``y = x @ W.T`` for activations ``x [..., in]``; returns fp32 ``[..., out]``."""
    check_path(path)
    if not isinstance(x, torch.Tensor):
        raise BackendError(f"activations are a {type(x).__name__}; accepted: a torch tensor [..., {t.in_features}]")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() >= 1 else x
    b = get_backend(backend, x.device.type, x2.shape[0] if x2.dim() == 2 else 1, t)
    y = b.matmul(x2, b.prepack(t), path)
    return y.reshape(*lead, t.out_features)


register(ReferenceBackend())
register(CpuBackend())
register(TritonBackend())
register(CusparseltBackend())

__all__ = ["Backend", "KNOWN_BACKENDS", "NUMERIC_PATHS", "available", "get_backend", "matmul", "register"]
