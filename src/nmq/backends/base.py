"""The backend interface: prepack a compressed weight once, then matmul."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import BackendError
from ..format.tensor import NMQTensor

NUMERIC_PATHS = ("w4a16", "w4a8")
"""``w4a16``: float activations, fp32 accumulation. ``w4a8``: activations
quantized to int8 per (token, group), exact int32 partial sums. The names
stand for the numeric path whatever the weight width is (INT4 or INT8)."""


class Backend:
    """A way to run ``y = x @ W.T`` on a compressed weight.

    Subclasses set ``name`` and implement ``prepack`` and ``matmul``; the
    packed object is whatever layout the backend wants, built once at load.
    """

    name: str = ""
    device: str = "cpu"

    def unavailable_reason(self) -> str | None:
        """None when this backend can run here, else why it cannot."""
        return None

    def unsupported_reason(self, t: NMQTensor) -> str | None:
        """None when this backend runs weights of ``t``'s format, else why not (``auto`` passes such a backend
        over for ``t``; only the header is read, so a header-only tensor will do)."""
        return None

    def check_supported(self, t: NMQTensor) -> None:
        """Raise BackendError naming why this backend cannot run ``t`` and what can."""
        reason = self.unsupported_reason(t)
        if reason:
            raise BackendError(f"backend {self.name!r} cannot run this weight: {reason}; backend 'reference' "
                               "(or auto) runs it")

    def prepack(self, t: NMQTensor) -> Any:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor, packed: Any, path: str = "w4a16") -> torch.Tensor:
        """``x [tokens, in]`` (float) to ``y [tokens, out]`` in fp32."""
        raise NotImplementedError

    def bind(self, packed: Any, path: str = "w4a16") -> Callable[[torch.Tensor], torch.Tensor]:
        """A call ``x [tokens, in] -> y [tokens, out]`` in ``x``'s dtype for this weight and path: what a layer
        runs per forward. Backends may check once here and make the call itself cheaper."""
        return lambda x: self.matmul(x, packed, path).to(x.dtype)

    def stack_rows(self, parts: list[Any]) -> tuple[Any, list[Any]] | None:
        """Optional: one packed weight with the rows of ``parts`` in order (weights that read the same input, run
        as one call), and each part again as a view of its memory; None when these parts cannot be stacked."""
        return None


def check_path(path: str) -> str:
    if path not in NUMERIC_PATHS:
        raise BackendError(f"numeric path {path!r} is unknown; accepted: {', '.join(NUMERIC_PATHS)}")
    return path


def check_input(x: torch.Tensor, t: NMQTensor) -> torch.Tensor:
    """Validate activations ``[tokens, in]`` for weight ``t``; return them as fp32."""
    if not isinstance(x, torch.Tensor):
        raise BackendError(f"activations are a {type(x).__name__}; accepted: a torch tensor [tokens, {t.in_features}]")
    if x.dim() != 2:
        raise BackendError(f"activations have shape {list(x.shape)}; accepted: [tokens, {t.in_features}]")
    if x.shape[1] != t.in_features:
        raise BackendError(
            f"activations have {x.shape[1]} features; the weight {list(t.shape)} expects {t.in_features}"
        )
    if not x.is_floating_point():
        raise BackendError(f"activations have dtype {x.dtype}; accepted: float32, float16 or bfloat16")
    return x.float()
