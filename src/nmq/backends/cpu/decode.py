"""The C++ operations of a batch-1 decode step besides the linear layers.

At batch 1 a LLaMA layer's other operations (two RMSNorms, rotary
embeddings, the KV cache write, attention, the SiLU gate, residual adds) are
a few thousand elements each. Run as PyTorch ops they are ~35 dispatches a
layer, and every one starts cold: the layer's weights have just streamed
through the caches. Measured in a decode step of a LLaMA-7B-shaped model on a
2-core machine that was ~0.35-0.45 ms a layer, a quarter of a 2:4 layer's
time. Here they are four calls a layer: :meth:`DecodeOps.norm` (residual add +
RMSNorm), :meth:`DecodeOps.attend` (rotary, cache write, attention over the
cache on the kernels' threads), :meth:`DecodeOps.silu_mul`, and the final norm.

Values stay in the model's dtype (fp32 or bf16) and bf16 results are rounded
where PyTorch's bf16 ops round them, so a step computes what the model's own
forward does (attention and the RMSNorm's sum in fp32, in their own order).

>>> import torch
>>> q, k, v = torch.randn(4, 64), torch.randn(2, 9, 64), torch.randn(2, 9, 64)
>>> o = decode_attention(q, k, v, 0.125)
>>> ref = torch.nn.functional.scaled_dot_product_attention(
...     q[:, None], k, v, scale=0.125, enable_gqa=True)[:, 0]
>>> bool(torch.allclose(o, ref, atol=1e-5))
True
"""

from __future__ import annotations

import torch

from ...errors import BackendError
from .ext import apply_env, native, require

DTYPES = (torch.float32, torch.bfloat16)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one new position over a KV cache, on the kernels' thread pool.

    ``q [heads, dim]``; ``k``, ``v [kv_heads, length, dim]`` fp32 or bf16 (views
    of a longer cache are fine while each head's rows are contiguous); query
    head h reads key/value head ``h // (heads // kv_heads)``. Returns
    ``softmax(scale * q k^T) v`` as fp32 ``[heads, dim]``, computed in fp32.
    """
    require()
    apply_env()
    if q.dim() != 2 or k.dim() != 3 or v.shape != k.shape or q.shape[1] != k.shape[2]:
        raise BackendError(f"decode attention takes q [heads, dim] and k, v [kv_heads, length, dim]; got "
                           f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    heads, dim = q.shape
    kv_heads, length = k.shape[0], k.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise BackendError(f"{heads} query heads cannot share {kv_heads} key/value heads evenly")
    if k.dtype not in DTYPES or v.dtype != k.dtype:
        raise BackendError(f"the KV cache has dtype {k.dtype}/{v.dtype}; accepted: float32 or bfloat16 (both alike)")
    if k.device.type != "cpu" or v.device.type != "cpu" or q.device.type != "cpu":
        raise BackendError("decode attention on the cpu backend takes CPU tensors")
    if k.stride() != v.stride() or k.stride()[1:] != (dim, 1):
        raise BackendError("k and v need contiguous [length, dim] rows per head, with equal strides")
    q = q.to(torch.float32).contiguous()
    out = torch.empty(heads, dim, dtype=torch.float32)
    native.attend(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), heads=heads, kv_heads=kv_heads,
                  length=length, dim=dim, head_stride=k.stride(0), bf16=k.dtype == torch.bfloat16, scale=float(scale))
    return out


class DecodeOps:
    """The step operations for one model, over its KV cache ``[layers, kv_heads, max_len, dim]`` (k and v),
    rotary tables ``cos``/``sin [max_len, dim]`` and the residual stream it owns (:attr:`h`, ``[1, hidden]``).

    Outputs go to buffers reused from call to call: each is read by the next linear layer before the next
    call of the same operation overwrites it.
    """

    def __init__(self, *, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                 dtype: torch.dtype, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, scale: float) -> None:
        require()
        apply_env()
        if dtype not in DTYPES:
            raise BackendError(f"the decode step ops run models in {dtype}; accepted: float32 or bfloat16")
        if heads % kv_heads or head_dim % 2:
            raise BackendError(f"{heads} heads over {kv_heads} key/value heads of {head_dim}: not a LLaMA layout")
        layers, kvh, max_len, dim = k_cache.shape
        for name, t in (("k cache", k_cache), ("v cache", v_cache), ("cos", cos), ("sin", sin)):
            if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
                raise BackendError(f"{name} must be a contiguous CPU tensor of {dtype}")
        if (kvh, dim) != (kv_heads, head_dim) or v_cache.shape != k_cache.shape or cos.shape != (max_len, dim) \
                or sin.shape != cos.shape:
            raise BackendError("KV cache and rotary tables do not match the model's heads")
        self.dtype, self.bf16 = dtype, dtype == torch.bfloat16
        self._size = 2 if self.bf16 else 4  # bytes a value
        self.hidden, self.intermediate = hidden, intermediate
        self.heads, self.kv_heads, self.head_dim, self.max_len = heads, kv_heads, head_dim, max_len
        self.scale = float(scale)
        self.k_cache, self.v_cache, self.cos, self.sin = k_cache, v_cache, cos, sin
        # [1, features]: what a linear layer's per-forward call (Backend.bind) takes as it is.
        self.h = torch.zeros(1, hidden, dtype=dtype)
        self._a = torch.empty(1, hidden, dtype=dtype)
        self._o = torch.empty(1, heads * head_dim, dtype=dtype)
        self._m = torch.empty(1, intermediate, dtype=dtype)
        layer_bytes = kv_heads * max_len * head_dim * self._size
        self._kc = [k_cache.data_ptr() + i * layer_bytes for i in range(layers)]
        self._vc = [v_cache.data_ptr() + i * layer_bytes for i in range(layers)]

    def _arg(self, t: torch.Tensor, n: int) -> torch.Tensor:
        # Linear layers return contiguous outputs of the model's dtype; anything else is made so here.
        if t.dtype != self.dtype or not t.is_contiguous() or t.device.type != "cpu":
            t = t.to("cpu", self.dtype).contiguous()
        if t.numel() != n:
            raise BackendError(f"decode step: expected {n} values, got {list(t.shape)}")
        return t

    def norm(self, add: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``h += add`` (when given), then ``weight * rmsnorm(h)``."""
        n = self.hidden
        add = None if add is None else self._arg(add, n)
        weight = self._arg(weight, n)
        native.add_rms_norm(self.h.data_ptr(), 0 if add is None else add.data_ptr(), weight.data_ptr(),
                            self._a.data_ptr(), n, float(eps), self.bf16)
        return self._a

    def attend(self, layer: int, pos: int, q: torch.Tensor, k: torch.Tensor | None = None,
               v: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate ``q``, ``k`` for position ``pos``, store ``k``, ``v`` in ``layer``'s cache there, attend over
        positions ``0..pos``; the heads' outputs ``[1, heads * dim]``. ``k`` and ``v`` None: ``q`` holds q, k
        and v one after another (a stacked q/k/v projection's output)."""
        if not 0 <= pos < self.max_len:
            raise BackendError(f"position {pos} is outside the KV cache of {self.max_len}")
        d, kv = self.head_dim, self.kv_heads * self.head_dim
        if k is None:
            q = self._arg(q, self.heads * d + 2 * kv)
            qp = q.data_ptr()
            kp, vp = qp + self.heads * d * self._size, qp + (self.heads * d + kv) * self._size
        else:
            q, k, v = self._arg(q, self.heads * d), self._arg(k, kv), self._arg(v, kv)
            qp, kp, vp = q.data_ptr(), k.data_ptr(), v.data_ptr()
        native.attend_step(qp, kp, vp, self.cos.data_ptr(), self.sin.data_ptr(), self._kc[layer], self._vc[layer],
                           self._o.data_ptr(), heads=self.heads, kv_heads=self.kv_heads, dim=d, pos=pos,
                           head_stride=self.max_len * d, bf16=self.bf16, scale=self.scale)
        return self._o

    def silu_mul(self, g: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``silu(g) * u``; ``u`` None: ``g`` holds gate and up one after the other."""
        n = self.intermediate
        if u is None:
            g = self._arg(g, 2 * n)
            gp = g.data_ptr()
            up = gp + n * self._size
        else:
            g, u = self._arg(g, n), self._arg(u, n)
            gp, up = g.data_ptr(), u.data_ptr()
        native.silu_mul(gp, up, self._m.data_ptr(), n, self.bf16)
        return self._m
