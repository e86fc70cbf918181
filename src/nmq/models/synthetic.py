"""Models with random weights built directly in compressed form (for scaling studies).

A LLaMA-7B-shaped model in fp32 needs 27 GB; this builds the skeleton without
allocating any dense linear weight and gives every linear layer a random but
valid NMQTensor (random codes, random kept positions, small random scales),
so a 7B model costs its compressed bytes plus the dense embeddings, norms and
``lm_head``.

>>> import torch
>>> from nmq.shapes import SHAPES
>>> model = llama_model(SHAPES["tiny"], Recipe(pattern="2:4", group_size=128), seed=0)
>>> type(model.model.layers[0].mlp.down_proj).__name__
'NMQLinear'
>>> model(torch.tensor([[1, 2, 3]])).logits.shape
torch.Size([1, 3, 256])
"""

from __future__ import annotations

import math

import torch

from ..compress.recipe import Recipe
from ..format import bitpack
from ..format.pattern import Pattern
from ..format.tensor import NMQTensor, encode_meta, padded_k
from ..runtime.linear import NMQLinear
from ..runtime.modules import set_submodule, target_layers
from .checkpoint import materialize_buffers


def random_nmq_tensor(out: int, k: int, pattern: Pattern, bits: int, group_size: int, symmetric: bool,
                      metadata: str, gen: torch.Generator, scale: float = 0.02) -> NMQTensor:
    """A valid NMQTensor with uniformly random codes and kept positions."""
    kp = padded_k(k, pattern, group_size)
    group = kp if group_size == -1 else group_size
    kept = kp // pattern.m * pattern.n
    values = torch.randint(0, 256, (out, bitpack.packed_bytes(kept, bits)), generator=gen, dtype=torch.uint8)
    if kept * bits % 8:
        values = bitpack.pack(bitpack.unpack(values, bits, kept), bits)  # clear the row's padding bits
    mgroups = kp // pattern.m
    if pattern.is_dense:
        meta = torch.zeros(out, 0, dtype=torch.uint8)
    else:
        # In chunks of rows: packing bit streams takes temporaries many times their size.
        parts = []
        for r0 in range(0, out, 1024):
            ranks = torch.randint(0, math.comb(pattern.m, pattern.n), (min(out, r0 + 1024) - r0, mgroups), generator=gen)
            if metadata == "rank":
                parts.append(bitpack.pack(ranks, pattern.rank_bits))
            else:
                parts.append(encode_meta(pattern.rank_to_positions(ranks), pattern, metadata))
        meta = torch.cat(parts)
    # Scales chosen so that dequantized weights have about the given standard deviation.
    levels = (1 << (bits - 1)) if symmetric else (1 << bits)
    s = (torch.rand(out, kp // group, generator=gen) * 0.5 + 0.75) * (scale * 1.7 / levels)
    zeros = None
    if not symmetric:
        zeros = bitpack.pack(torch.full((out, kp // group), 1 << (bits - 1), dtype=torch.int32), bits)
    return NMQTensor((out, k), pattern, bits, group_size, symmetric, metadata, values, meta, s.half(), zeros)


def llama_model(shape: dict, recipe: Recipe | None, seed: int = 0, dtype: torch.dtype = torch.float32,
                backend: str = "auto", release_source: bool = False, head: Recipe | None = None,
                path: str = "w4a16", device: str = "cpu") -> torch.nn.Module:
    """A LlamaForCausalLM of the given shape with random weights.

    With ``recipe`` the selected linear layers are random NMQTensors (no dense
    copy is ever made), each packed for ``backend`` as it is made; with
    ``release_source`` only the packed form is kept (inference-only, about half
    the memory). ``head``, if given, compresses ``lm_head`` with its own recipe
    (e.g. dense INT4); ``path`` is the layers' numeric path. Without ``recipe`` every weight is dense in ``dtype``;
    the weights that stay dense are in ``dtype`` either way, made on ``device`` (a GPU draws a 7B model's
    in seconds; its random numbers differ from the CPU's) with the rest of the model moved there.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=False)
    gen = torch.Generator().manual_seed(seed)
    dense_gen = gen if torch.device(device).type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    compressed = {n: recipe for n in target_layers(model, recipe)} if recipe is not None else {}
    if recipe is not None and head is not None:
        compressed["lm_head"] = head
    for name, module in list(model.named_modules()):
        r = compressed.get(name)
        if r is not None:
            t = random_nmq_tensor(module.out_features, module.in_features, Pattern.parse(r.pattern), r.bits,
                                  r.group_size, r.symmetric, r.metadata, gen)
            layer = NMQLinear(t, backend=backend, path=path)
            layer.prepack()
            if release_source:
                layer.release_source()
            del t
            set_submodule(model, name, layer)
    for name, p in list(model.named_parameters()):
        if p.is_meta:
            if name.endswith("norm.weight") or ".norm" in name or "layernorm" in name:
                value = torch.ones(p.shape, dtype=dtype, device=device)
            else:
                value = torch.randn(p.shape, generator=dense_gen, dtype=dtype, device=device).mul_(0.02)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, torch.nn.Parameter(value, requires_grad=False))
    materialize_buffers(model)
    return model.to(device).eval()
