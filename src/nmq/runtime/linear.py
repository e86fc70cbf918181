"""NMQLinear: a drop-in ``torch.nn.Linear`` whose weight is an NMQTensor.

>>> import torch, nmq
>>> dense = torch.nn.Linear(128, 32)
>>> layer = nmq.NMQLinear.from_linear(dense, pattern="2:4", group_size=64)
>>> layer(torch.randn(2, 5, 128)).shape
torch.Size([2, 5, 32])
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..backends import check_path, get_backend
from ..compress.weight import compress_weight
from ..errors import BackendError
from ..format.tensor import NMQTensor


class NMQLinear(torch.nn.Module):
    """``y = x @ W.T + b`` with ``W`` compressed; the backend's packed form is built once."""

    def __init__(
        self, weight: NMQTensor, bias: torch.Tensor | None = None, backend: str = "auto", path: str = "w4a16"
    ) -> None:
        super().__init__()
        self.nmq_weight: NMQTensor | None = weight
        self._header_only: NMQTensor | None = None  # the weight's format, once the weight itself is released
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self._format = f"pattern={weight.pattern}, bits={weight.bits}, group_size={weight.group_size}"
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.backend = backend
        self.path = check_path(path)
        self._packed: dict[str, Any] = {}
        # device type -> (backend, packed form, bound call): resolved at the first
        # call on a device, since at batch 1 a call is only tens of microseconds.
        self._route: dict[str, tuple[Any, Any, Any]] = {}

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, backend: str = "auto", path: str = "w4a16", **compress) -> NMQLinear:
        """Compress ``linear.weight`` with :func:`nmq.compress_weight` keyword arguments."""
        t = compress_weight(linear.weight, **compress)
        return cls(t, linear.bias, backend=backend, path=path)

    @property
    def _format_of(self) -> NMQTensor | None:
        """What a backend is chosen for: the weight, or its header-only stand-in once released."""
        return self.nmq_weight if self.nmq_weight is not None else self._header_only

    def set_backend(self, backend: str = "auto", path: str | None = None) -> None:
        """Choose the backend (and numeric path) used from the next call on."""
        get_backend(backend, weight=self._format_of)  # fail now, not at the first forward
        self.backend = backend
        self._route.clear()
        if path is not None:
            self.path = check_path(path)

    def prepack(self, device: str = "cpu", batch: int = 1) -> None:
        """Build the backend's layout now (at load), not at the first forward."""
        self._packed_for(get_backend(self.backend, device, batch, self._format_of))

    def release_source(self) -> None:
        """Free the NMQTensor and keep only the packed forms built so far.

        For inference-only models where memory counts: the layer then runs on
        the backends it was packed for, and saving it or running it on another
        backend fails with a clear error.
        """
        if not self._packed:
            raise BackendError("release_source() needs a packed form: call prepack() first")
        t = self.nmq_weight
        if t is not None:  # auto still chooses for the weight's format: its header, the fields as meta tensors
            self._header_only = replace(t, **{n: torch.empty(f.shape, dtype=f.dtype, device="meta")
                                               for n, f in t.tensors().items()})
        self.nmq_weight = None

    def _packed_for(self, backend) -> Any:
        packed = self._packed.get(backend.name)
        if packed is None:
            if self.nmq_weight is None:
                raise BackendError(
                    f"this layer kept only its {', '.join(self._packed)} form (release_source); backend "
                    f"{backend.name!r} needs the NMQTensor: reload the model")
            packed = self._packed[backend.name] = backend.prepack(self.nmq_weight)
        return packed

    def _route_for(self, device: str, tokens: int) -> tuple[Any, Any, Any]:
        route = self._route.get(device)
        if route is None:
            backend = get_backend(self.backend, device, tokens, self._format_of)
            packed = self._packed_for(backend)
            route = self._route[device] = (backend, packed, backend.bind(packed, self.path))
        return route

    def bound_call(self, device: str = "cpu"):
        """What :meth:`forward` runs on ``device`` for inputs ``[tokens, in_features]`` without a bias: a call
        ``x -> y`` in ``x``'s dtype, for callers that run it many times (a decoder's step); None with a bias."""
        return None if self.bias is not None else self._route_for(device, 1)[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        route = self._route_for(x.device.type, x2.shape[0])
        if self.bias is None:
            return route[2](x2).view(*lead, self.out_features)
        y = route[0].matmul(x2, route[1], self.path) + self.bias.float()
        return y.to(x.dtype).view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self._format}, backend={self.backend}, path={self.path}"
        )


class FusedLinear:
    """NMQLinear layers that read the same input, run as one call with their rows stacked.

    Built by :func:`fuse_linears`; calling it returns one output per layer. At
    batch 1 a call's fixed costs (quantizing the activations, waking the
    threads) are a good part of a small layer's time, and q/k/v or gate/up
    each pay them once instead of two or three times. Until the layers change
    backend or numeric path; then it runs them one by one.
    """

    def __init__(self, layers: list[NMQLinear], backend, packed, path: str) -> None:
        self.layers, self.backend, self.packed, self.path = layers, backend, packed, path
        self.run = backend.bind(packed, path)
        self.backend_name = layers[0].backend
        self.splits = [layer.out_features for layer in layers]

    def current(self) -> bool:
        """Whether the layers still run as stacked (same backend and path as when fused)."""
        return all(layer.backend == self.backend_name and layer.path == self.path for layer in self.layers)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.current():
            return tuple(layer(x) for layer in self.layers)
        lead = x.shape[:-1]
        return self.run(x.reshape(-1, x.shape[-1])).view(*lead, -1).split(self.splits, dim=-1)


def fuse_linears(layers: list[torch.nn.Module], device: str = "cpu") -> FusedLinear | None:
    """Stack NMQLinear layers over one input into a :class:`FusedLinear` when their backend can (same format,
    backend and path, no bias); None otherwise. The layers then hold views of the stacked weight, so memory
    does not grow, and each still runs on its own.

    >>> import torch, nmq
    >>> a, b = (nmq.NMQLinear.from_linear(torch.nn.Linear(256, 32, bias=False), backend="cpu", pattern="2:4")
    ...         for _ in range(2))
    >>> fused = fuse_linears([a, b])
    >>> x = torch.randn(1, 256)
    >>> ya, yb = fused(x)
    >>> torch.equal(ya, a(x)) and torch.equal(yb, b(x))
    True
    """
    if len(layers) < 2 or not all(isinstance(layer, NMQLinear) and layer.bias is None for layer in layers):
        return None
    first = layers[0]
    if any(layer.backend != first.backend or layer.path != first.path or layer.in_features != first.in_features
           for layer in layers):
        return None
    chosen = [get_backend(layer.backend, device, 1, layer._format_of) for layer in layers]
    backend = chosen[0]
    if any(b is not backend for b in chosen):  # auto runs the layers' formats on different backends
        return None
    stacked = backend.stack_rows([layer._packed_for(backend) for layer in layers])
    if stacked is None:
        return None
    whole, views = stacked
    for layer, view in zip(layers, views):
        layer._packed[backend.name] = view
        layer._route.clear()
    return FusedLinear(list(layers), backend, whole, first.path)
