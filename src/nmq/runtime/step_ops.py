"""The operations of a decoder step besides the linear layers, in two implementations.

:class:`nmq.runtime.decoder.LlamaDecoder` writes a LLaMA layer's math once,
against :class:`StepOps`: the residual stream lives in the ops object, and a
layer is ``norm`` (residual add + RMSNorm), the q/k/v projection, ``attend``
(rotary, KV cache write, attention), the output projection, ``norm``, gate/up,
``act_mul``, down. :class:`TorchStepOps` runs them as PyTorch ops (any device
and dtype, any number of positions: prefill); :func:`cpp_step_ops` hands out
:class:`nmq.backends.cpu.decode.DecodeOps`' own methods (one position, fp32 or
bf16 on the CPU, the same roundings), so the C++ path costs no Python beyond
the calls themselves.

Stacked projections: ``attend`` takes q, k, v as three tensors or as one
holding them one after another, and ``act_mul`` gate and up likewise.

>>> import torch
>>> k = torch.zeros(1, 1, 1, 4, 2)
>>> cos, sin = torch.ones(4, 2), torch.zeros(4, 2)
>>> ops = TorchStepOps(k, torch.zeros_like(k), cos, sin, heads=2, kv_heads=1, scale=1.0, act=torch.nn.SiLU())
>>> ops.begin(torch.ones(1, 4), 0)
>>> ops.attend(0, 0, torch.arange(8.0).view(1, 8)).tolist()  # q|k|v stacked; one key: each head gets v
[[6.0, 7.0, 6.0, 7.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from ..backends import available
from ..backends.cpu.decode import DTYPES, DecodeOps


class StepOps(Protocol):
    """What a decoder step calls besides its linear layers. Inputs and outputs are ``[positions, features]``;
    outputs may be buffers that the next call of the same operation overwrites."""

    def begin(self, x: torch.Tensor, start: int) -> None:
        """Start a step: the residual stream is ``x`` (the embeddings), at positions ``start`` on."""

    def norm(self, add: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """Add ``add`` (when given) to the residual stream, then its ``weight * rmsnorm``."""

    def attend(self, layer: int, start: int, q: torch.Tensor, k: torch.Tensor | None = None,
               v: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate q and k, store k and v in ``layer``'s cache, attend causally over it: ``[positions,
        heads * head_dim]``."""

    def act_mul(self, g: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP's activation of the gate, times up."""

    def last_norm(self, add: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """:meth:`norm` of the last position only: the input of the LM head, ``[1, hidden]``."""


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # LlamaRMSNorm: normalized in fp32, cast back, then scaled by the weight.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class TorchStepOps:
    """:class:`StepOps` as PyTorch ops over the KV cache ``k``, ``v [layers, 1, kv_heads, max_len, head_dim]``
    and rotary tables ``cos``, ``sin [max_len, head_dim]``."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, heads: int,
                 kv_heads: int, scale: float, act: Callable[[torch.Tensor], torch.Tensor],
                 qk_norms: list[tuple[torch.Tensor, float, torch.Tensor, float]] | None = None) -> None:
        self.k, self.v, self.cos, self.sin = k, v, cos, sin
        self.qk_norms = qk_norms  # Qwen3: per layer (q weight, eps, k weight, eps), over each head before rotary
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, k.shape[-1]
        self.scale, self.act = scale, act
        self.splits = [heads * self.head_dim, kv_heads * self.head_dim, kv_heads * self.head_dim]
        self.h = self._cos = self._sin = self._mask = None

    def begin(self, x: torch.Tensor, start: int) -> None:
        # Rotary slices and the mask once a step, not once a layer.
        T = x.shape[0]
        end = start + T
        self.h = x
        self._cos = self.cos[start:end].unsqueeze(0)  # broadcast over heads: [1, T, d]
        self._sin = self.sin[start:end].unsqueeze(0)
        self._mask = None if T == 1 else torch.ones(T, end, dtype=torch.bool, device=x.device).tril(start)

    def norm(self, add: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if add is not None:
            self.h = self.h + add
        return _rms_norm(self.h, weight, eps)

    def last_norm(self, add: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        h = self.h if add is None else self.h + add
        return _rms_norm(h[-1:], weight, eps)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * self._cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * self._sin

    def attend(self, layer: int, start: int, q: torch.Tensor, k: torch.Tensor | None = None,
               v: torch.Tensor | None = None) -> torch.Tensor:
        if k is None:
            q, k, v = q.split(self.splits, dim=-1)
        T, d = q.shape[0], self.head_dim
        end = start + T
        q = q.reshape(T, self.heads, d).transpose(0, 1)
        k = k.reshape(T, self.kv_heads, d).transpose(0, 1)
        if self.qk_norms is not None:
            qw, qe, kw, ke = self.qk_norms[layer]
            q, k = _rms_norm(q, qw, qe), _rms_norm(k, kw, ke)
        v = v.reshape(T, self.kv_heads, d).transpose(0, 1)
        self.k[layer, 0, :, start:end] = self._rotate(k)
        self.v[layer, 0, :, start:end] = v
        o = F.scaled_dot_product_attention(
            self._rotate(q).unsqueeze(0), self.k[layer, :, :, :end], self.v[layer, :, :, :end],
            attn_mask=self._mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads)
        return o[0].transpose(0, 1).reshape(T, self.heads * d)

    def act_mul(self, g: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        if u is None:
            g, u = g.chunk(2, dim=-1)
        return self.act(g) * u


class _CppStepOps:
    """:class:`StepOps` of one position as DecodeOps' bound methods themselves: no Python call in between."""

    def __init__(self, ops: DecodeOps) -> None:
        self._h = ops.h
        self.norm = self.last_norm = ops.norm  # one position: it is the last
        self.attend = ops.attend
        self.act_mul = ops.silu_mul

    def begin(self, x: torch.Tensor, start: int) -> None:
        self._h.copy_(x)


def cpp_step_ops(config, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 norms: list[torch.Tensor], scale: float) -> StepOps | None:
    """The C++ step operations (:class:`nmq.backends.cpu.decode.DecodeOps`) over the same cache as
    :class:`TorchStepOps`, where they compute what the model does (SiLU MLP, even head size, fp32 or bf16 on
    the CPU, norm weights in the model's dtype) and the extension is built; else None."""
    dtype, (_, _, kv_heads, _, head_dim) = k.dtype, k.shape
    if k.device.type != "cpu" or dtype not in DTYPES or "cpu" not in available():
        return None
    if getattr(config, "hidden_act", None) != "silu" or head_dim % 2 or any(w.dtype != dtype for w in norms):
        return None
    return _CppStepOps(DecodeOps(
        hidden=config.hidden_size, heads=config.num_attention_heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=config.intermediate_size, dtype=dtype, k_cache=k[:, 0], v_cache=v[:, 0], cos=cos, sin=sin,
        scale=scale))
