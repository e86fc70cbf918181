"""A lean token-by-token decoder for LLaMA-architecture models.

At batch 1 a decoder layer's own arithmetic besides the linear layers is tiny,
and a generic implementation spends more time dispatching its many small
PyTorch ops (masks, cache objects, ``rotate_half`` per head layout, logits
processors) than computing. :class:`LlamaDecoder` runs the same model (its
modules and weights, whatever backend its linear layers use) with a
preallocated KV cache and only the ops the arithmetic needs: one fused
RMSNorm, the linear layers, rotary embeddings, one
``scaled_dot_product_attention`` and the SiLU gate per layer. Compressed
q/k/v and gate/up projections run as one call each where their backend can
stack them (:func:`nmq.runtime.linear.fuse_linears`). On the CPU, with the extension
built, a decode step of an fp32 or bf16 model runs those other ops as four C++
calls a layer instead (:class:`nmq.backends.cpu.decode.DecodeOps`: the same
roundings, attention on the kernels' threads) and each layer's calls are bound
once per generation; prefill and other devices use the PyTorch ops. Models it
does not cover run on their own ``generate`` (:func:`nmq.runtime.generate.generate_ids`
chooses).

>>> import torch, nmq
>>> model = nmq.builtin_model()
>>> dec = LlamaDecoder(model, max_len=16)
>>> logits = dec.step(torch.tensor([[100, 101, 102]]))  # prefill: logits of the last position
>>> tuple(logits.shape), dec.length
((256,), 3)
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F

from ..backends.cpu.decode import DTYPES, DecodeOps
from ..backends.cpu.matmul import CpuBackend
from .linear import FusedLinear, NMQLinear, fuse_linears

# module -> (projection names, FusedLinear or None): stacked once per model, not per generation.
_FUSED: WeakKeyDictionary = WeakKeyDictionary()


def _fused(module: torch.nn.Module, names: tuple[str, ...], device: str) -> FusedLinear | None:
    cached = _FUSED.get(module)
    if cached is None or cached[0] != names:
        cached = _FUSED[module] = (names, fuse_linears([getattr(module, n) for n in names], device))
    return cached[1]


def supports(model) -> bool:
    """Whether :class:`LlamaDecoder` runs ``model`` exactly as its own forward does."""
    config = getattr(model, "config", None)
    if config is None or type(model).__name__ != "LlamaForCausalLM" or getattr(config, "model_type", "") != "llama":
        return False
    if getattr(config, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))


class LlamaDecoder:
    """Prefill and decode steps of a ``LlamaForCausalLM`` with a KV cache of ``max_len`` positions."""

    def __init__(self, model, max_len: int) -> None:
        if not supports(model):
            raise ValueError(f"LlamaDecoder runs LlamaForCausalLM models; got {type(model).__name__}")
        self.model = model
        config = model.config
        inner = model.model
        self.layers = list(inner.layers)
        first = self.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = first.scaling
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device
        self.max_len = max_len
        self.length = 0
        shape = (len(self.layers), 1, self.kv_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.qkv = [_fused(layer.self_attn, ("q_proj", "k_proj", "v_proj"), self.device.type) for layer in self.layers]
        self.gate_up = [_fused(layer.mlp, ("gate_proj", "up_proj"), self.device.type) for layer in self.layers]
        # cos/sin of every position once, from the model's own rotary module
        # (so any rope scaling it implements applies), in the model's dtype.
        probe = torch.zeros(1, 1, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            cos, sin = inner.rotary_emb(probe, torch.arange(max_len, device=self.device).unsqueeze(0))
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # [max_len, head_dim]
        self.ops = self._decode_ops(config)
        self._plan: list[tuple] | None = None

    def _decode_ops(self, config) -> DecodeOps | None:
        """The C++ step operations (nmq.backends.cpu.decode) where they compute what the model does."""
        if self.device.type != "cpu" or self.dtype not in DTYPES or CpuBackend().unavailable_reason() is not None:
            return None
        if getattr(config, "hidden_act", None) != "silu" or self.head_dim % 2:
            return None
        norms = [n for layer in self.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if any(n.weight.dtype != self.dtype for n in norms + [self.model.model.norm]):
            return None
        return DecodeOps(hidden=config.hidden_size, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                         intermediate=config.intermediate_size, dtype=self.dtype, k_cache=self.k[:, 0],
                         v_cache=self.v[:, 0], cos=self.cos, sin=self.sin, scale=self.scaling)

    def _call(self, module):
        """``module``'s per-forward call on ``[1, features]`` inputs, without ``Module.__call__`` and reshapes."""
        if isinstance(module, NMQLinear):
            return module.bound_call(self.device.type) or module.forward
        return module.forward

    def _decode_plan(self) -> list[tuple]:
        """Per layer, what a decode step calls, looked up once (module attribute lookups and ``Module.__call__``
        cost microseconds each, and a step makes a dozen calls a layer). A stacked q/k/v or gate/up call returns
        one tensor that the step ops take whole; otherwise a tuple of the projections."""
        plan = []
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
            qkv = self._stacked(self.qkv[i], [attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = self._stacked(self.gate_up[i], [mlp.gate_proj, mlp.up_proj])
            plan.append((n1.weight, n1.variance_epsilon, qkv, self._call(attn.o_proj), n2.weight, n2.variance_epsilon,
                         gate_up, self._call(mlp.down_proj)))
        return plan

    def _stacked(self, fused: FusedLinear | None, modules: list):
        """The stacked call (one tensor out) while ``fused`` still holds, else the projections' calls (a tuple)."""
        if fused is not None and fused.current():
            return fused.run
        calls = [self._call(m) for m in modules]
        return lambda a: tuple(c(a) for c in calls)

    def _decode_one(self, ids: torch.Tensor) -> torch.Tensor:
        """One position through the C++ step operations; the same arithmetic as :meth:`step`."""
        ops, pos = self.ops, self.length
        if self._plan is None:
            self._plan = self._decode_plan()
        inner = self.model.model
        ops.h.copy_(inner.embed_tokens(ids).view(1, -1))
        add = None
        for i, (w1, eps1, qkv, o_proj, w2, eps2, gate_up, down) in enumerate(self._plan):
            y = qkv(ops.norm(add, w1, eps1))
            add = o_proj(ops.attend(i, pos, *y) if isinstance(y, tuple) else ops.attend(i, pos, y))
            y = gate_up(ops.norm(add, w2, eps2))
            add = down(ops.silu_mul(*y) if isinstance(y, tuple) else ops.silu_mul(y))
        last = ops.norm(add, inner.norm.weight, inner.norm.variance_epsilon)
        self.length = pos + 1
        return self.model.lm_head(last).reshape(-1).float()

    @staticmethod
    def _norm(x: torch.Tensor, norm) -> torch.Tensor:
        # LlamaRMSNorm: normalized in fp32, cast back, then scaled by the weight.
        return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Run tokens ``ids [1, T]`` at the next T positions; logits ``[vocab]`` of the last one (fp32)."""
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"LlamaDecoder runs one sequence: ids of shape [1, T], got {list(ids.shape)}")
        T, start = ids.shape[1], self.length
        end = start + T
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {end} needed")
        if T == 1 and self.ops is not None:
            return self._decode_one(ids)
        inner = self.model.model
        h = inner.embed_tokens(ids)
        cos = self.cos[start:end].unsqueeze(0)  # broadcast over heads: [1, T, d]
        sin = self.sin[start:end].unsqueeze(0)
        mask = None
        if T > 1:  # causal over the cache and the new positions
            mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(start)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            a = self._norm(h, layer.input_layernorm)
            qkv = self.qkv[i]
            q, k, v = qkv(a) if qkv is not None else (attn.q_proj(a), attn.k_proj(a), attn.v_proj(a))
            q = q.reshape(T, self.heads, self.head_dim).transpose(0, 1)
            k = k.reshape(T, self.kv_heads, self.head_dim).transpose(0, 1)
            v = v.reshape(T, self.kv_heads, self.head_dim).transpose(0, 1)
            self.k[i, 0, :, start:end] = self._rotate(k, cos, sin)
            self.v[i, 0, :, start:end] = v
            o = F.scaled_dot_product_attention(
                self._rotate(q, cos, sin).unsqueeze(0), self.k[i, :, :, :end], self.v[i, :, :, :end],
                attn_mask=mask, scale=self.scaling, enable_gqa=self.kv_heads != self.heads)
            h = h + attn.o_proj(o[0].transpose(0, 1).reshape(1, T, self.heads * self.head_dim))
            a = self._norm(h, layer.post_attention_layernorm)
            gu = self.gate_up[i]
            g, u = gu(a) if gu is not None else (mlp.gate_proj(a), mlp.up_proj(a))
            h = h + mlp.down_proj(mlp.act_fn(g) * u)
        self.length = end
        last = self._norm(h[:, -1:], inner.norm)
        return self.model.lm_head(last).reshape(-1).float()
