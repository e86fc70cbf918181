"""A lean token-by-token decoder for LLaMA-architecture models (LLaMA, Mistral, Qwen2, Qwen3).

At batch 1 a decoder layer's own arithmetic besides the linear layers is tiny,
and a generic implementation spends more time dispatching its many small
PyTorch ops (masks, cache objects, ``rotate_half`` per head layout, logits
processors) than computing. :class:`LlamaDecoder` runs the same model (its
modules and weights, whatever backend its linear layers use) with a
preallocated KV cache and only the ops the arithmetic needs: one fused
RMSNorm, the linear layers, rotary embeddings, one
``scaled_dot_product_attention`` and the SiLU gate per layer. Compressed
q/k/v and gate/up projections run as one call each where their backend can
stack them (:func:`nmq.runtime.linear.fuse_linears`). The layer math is
written once, in :meth:`LlamaDecoder.step`, over the operations of
:mod:`nmq.runtime.step_ops`: PyTorch's for prefill and other devices and
dtypes, and on the CPU, with the extension built, C++ calls for a decode step
of an fp32 or bf16 model (:class:`nmq.backends.cpu.decode.DecodeOps`: the
same roundings, attention on the kernels' threads). Each layer's calls are
looked up once per decoder (:class:`LayerPlan`). Models it does not cover run
on their own ``generate`` (:func:`nmq.runtime.generate.generate_ids` chooses).

>>> import torch, nmq
>>> model = nmq.builtin_model()
>>> dec = LlamaDecoder(model, max_len=16)
>>> logits = dec.step(torch.tensor([[100, 101, 102]]))  # prefill: logits of the last position
>>> tuple(logits.shape), dec.length
((256,), 3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch

from .linear import FusedLinear, NMQLinear, fuse_linears
from .step_ops import StepOps, TorchStepOps, cpp_step_ops

# module -> (projection names, FusedLinear or None): stacked once per model, not per generation.
_FUSED: WeakKeyDictionary = WeakKeyDictionary()

STEP_OPS = ("auto", "torch")


def _fused(module: torch.nn.Module, names: tuple[str, ...], device: str) -> FusedLinear | None:
    cached = _FUSED.get(module)
    if cached is None or cached[0] != names:
        cached = _FUSED[module] = (names, fuse_linears([getattr(module, n) for n in names], device))
    return cached[1]


# The families whose decoder layer is LLaMA's (pre-norm, rotary q/k, SiLU-gated MLP): Mistral adds a sliding
# window, Qwen2 biases on q/k/v (which run inside the projections' own calls).
# Qwen3 drops the biases and normalizes q and k per head before rotary.
FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}


def supports(model, max_len: int | None = None) -> bool:
    """Whether :class:`LlamaDecoder` runs ``model`` exactly as its own forward does, over ``max_len`` positions
    (a sliding window shorter than that would mask what the decoder attends to)."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", "")
    if config is None or FAMILIES.get(family) != type(model).__name__:
        return False
    if getattr(config, "pretraining_tp", 1) != 1:
        return False
    window = getattr(config, "sliding_window", None)
    if family in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        window = None
    if window is not None and (max_len is None or max_len > window):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """What a step calls for one layer, looked up once: module attribute lookups and ``Module.__call__`` cost
    microseconds each, and a step makes a dozen calls a layer. The projections take and return ``[positions,
    features]``; ``qkv`` and ``gate_up`` return one stacked tensor where their layers run as one call, else a
    tuple of the projections' outputs."""

    attn_norm: torch.Tensor
    attn_eps: float
    qkv: Callable
    o_proj: Callable
    mlp_norm: torch.Tensor
    mlp_eps: float
    gate_up: Callable
    down_proj: Callable


class LlamaDecoder:
    """Prefill and decode steps of a ``LlamaForCausalLM`` with a KV cache of ``max_len`` positions.

    ``step_ops``: ``auto`` decodes single positions on the C++ step operations where they compute what the
    model does, ``torch`` always on PyTorch's.
    """

    def __init__(self, model, max_len: int, *, step_ops: str = "auto") -> None:
        if not supports(model, max_len):
            raise ValueError(f"LlamaDecoder runs {', '.join(FAMILIES.values())} models (without a sliding window "
                             f"shorter than {max_len}); got {type(model).__name__}")
        if step_ops not in STEP_OPS:
            raise ValueError(f"step_ops must be one of {', '.join(STEP_OPS)}; got {step_ops!r}")
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
        qk_norms = None
        if hasattr(first, "q_norm"):
            qk_norms = [(a.q_norm.weight, a.q_norm.variance_epsilon, a.k_norm.weight, a.k_norm.variance_epsilon)
                        for a in (layer.self_attn for layer in self.layers)]
        self.prefill_ops: StepOps = TorchStepOps(self.k, self.v, self.cos, self.sin, heads=self.heads,
                                                 kv_heads=self.kv_heads, scale=self.scaling,
                                                 act=self.layers[0].mlp.act_fn, qk_norms=qk_norms)
        norms = [n.weight for layer in self.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        # The C++ step has no q/k norms: Qwen3 decodes on PyTorch's ops.
        cpp = None if step_ops == "torch" or qk_norms else cpp_step_ops(config, self.k, self.v, self.cos, self.sin,
                                                             norms + [inner.norm.weight], self.scaling)
        self.decode_ops: StepOps = cpp or self.prefill_ops
        # Built at the first step, so that it binds the layers' backends as they are when decoding starts.
        self._plan: list[LayerPlan] | None = None

    def _call(self, module):
        """``module``'s per-forward call on ``[positions, features]`` inputs, without ``Module.__call__`` and
        reshapes."""
        if isinstance(module, NMQLinear):
            return module.bound_call(self.device.type) or module.forward
        return module.forward

    def _stacked(self, fused: FusedLinear | None, modules: list):
        """The stacked call (one tensor out) while ``fused`` still holds, else the projections' calls (a tuple)."""
        if fused is not None and fused.current():
            return fused.run
        calls = [self._call(m) for m in modules]
        return lambda a: tuple(c(a) for c in calls)

    def _build_plan(self) -> list[LayerPlan]:
        plan = []
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
            plan.append(LayerPlan(
                attn_norm=n1.weight, attn_eps=n1.variance_epsilon,
                qkv=self._stacked(self.qkv[i], [attn.q_proj, attn.k_proj, attn.v_proj]),
                o_proj=self._call(attn.o_proj),
                mlp_norm=n2.weight, mlp_eps=n2.variance_epsilon,
                gate_up=self._stacked(self.gate_up[i], [mlp.gate_proj, mlp.up_proj]),
                down_proj=self._call(mlp.down_proj)))
        return plan

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Run tokens ``ids [1, T]`` at the next T positions; logits ``[vocab]`` of the last one (fp32)."""
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"LlamaDecoder runs one sequence: ids of shape [1, T], got {list(ids.shape)}")
        T, start = ids.shape[1], self.length
        end = start + T
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {end} needed")
        if self._plan is None:
            self._plan = self._build_plan()
        ops = self.decode_ops if T == 1 else self.prefill_ops
        inner = self.model.model
        ops.begin(inner.embed_tokens(ids).view(T, -1), start)
        norm, attend, act_mul = ops.norm, ops.attend, ops.act_mul
        add = None
        for i, p in enumerate(self._plan):
            y = p.qkv(norm(add, p.attn_norm, p.attn_eps))
            add = p.o_proj(attend(i, start, *y) if type(y) is tuple else attend(i, start, y))
            y = p.gate_up(norm(add, p.mlp_norm, p.mlp_eps))
            add = p.down_proj(act_mul(*y) if type(y) is tuple else act_mul(y))
        last = ops.last_norm(add, inner.norm.weight, inner.norm.variance_epsilon)
        self.length = end
        return self.model.lm_head(last).reshape(-1).float()
