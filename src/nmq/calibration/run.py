"""Compressing a whole model: the one entry point, and the calibrated run block by block.

Data-free methods (magnitude, rtn) compress each selected layer on its own.
Calibrated ones run block by block (:mod:`nmq.calibration.blocks`):

1. Calibration samples: token windows drawn (seeded) from text
   (:mod:`nmq.calibration.data`).
2. The inputs of the first decoder block are captured by running the
   embeddings only.
3. For each block, its linear layers are compressed in execution order,
   grouped by shared input (q/k/v, then o, then gate/up, then down for
   LLaMA): the group's Hessian ``X^T X`` is accumulated over the samples
   with the earlier groups already compressed, then each layer of the group
   is compressed with it. The block's outputs are the next block's inputs,
   and the block's activations are freed. Wanda, which updates no weight,
   takes all of a block's statistics from one run of the block as it
   arrives, as Wanda's reference code does.

Peak memory is the model plus one block's activations for all samples plus
one Hessian.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch

from ..compress.methods import LayerResult, compress_layer
from ..compress.recipe import Recipe
from ..compress.weight import compress_padded, compress_with, from_mask
from ..errors import ModelError, NMQError
from ..format.tensor import padded_k
from ..progress import progress as progress_bar
from ..runtime.linear import NMQLinear
from ..runtime.modules import set_submodule, target_layers
from .blocks import HookedBlock, PreNormBlock, decoder_blocks, first_block_inputs
from .data import Calibration, calibration_tokens
from .hessian import gram, padded_hessian, squared_norms
from .recover import recover_block

DEFAULT_BATCH = 8


def compress_model(model: torch.nn.Module, recipe: Recipe | dict | None = None,
                   calibration: Calibration | torch.Tensor | None = None, progress: bool = True, *,
                   quantize: bool = True, batch: int | None = None) -> torch.nn.Module:
    """Compress the selected ``nn.Linear`` layers of ``model`` in place; returns ``model``.

    Compressed layers become NMQLinear. Calibrated methods (wanda, sparsegpt,
    gptq) run block by block over ``calibration``: token ids ``[samples,
    seq_len]``, or a :class:`Calibration` (default: 128 x 512 tokens of the
    standard library's source, for byte-level models), ``batch`` samples at a
    time (default: the Calibration's, else 8). With ``quantize=False`` the
    layers are only pruned (with the method's updates) and stay ``nn.Linear``
    with float values: the pruning-only rows of the accuracy table. A
    ``bits=16`` recipe prunes the same way and makes the layers NMQLinear
    holding the pruned values as 16-bit floats (what a checkpoint stores).

    >>> import nmq
    >>> model = nmq.builtin_model()
    >>> model = nmq.compress_model(model, nmq.Recipe(pattern="2:4", bits=4, group_size=128), progress=False)
    >>> type(model.model.layers[0].mlp.down_proj).__name__, type(model.lm_head).__name__
    ('NMQLinear', 'Linear')
    """
    if recipe is None:
        recipe = Recipe()
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    names = target_layers(model, recipe)
    if recipe.recover and not quantize:
        raise ModelError("recover tunes compressed layers' codes and scales; accepted: quantize=True")
    if not names:
        raise ModelError(f"no linear layer matches targets {recipe.targets!r} outside ignore {list(recipe.ignore)}")
    if not quantize and not recipe.needs_calibration and calibration is None:
        # Pruning only, without data (magnitude): every layer on its own.
        for n in names:
            lin = model.get_submodule(n)
            lin.weight.data = _pruned(lin, recipe, None).to(lin.weight.dtype)
    elif recipe.needs_calibration or not quantize:
        if batch is None:
            batch = calibration.batch if isinstance(calibration, Calibration) else DEFAULT_BATCH
        if not isinstance(calibration, torch.Tensor) and recipe.needs_calibration:
            if getattr(model.config, "vocab_size", None) != 256:
                raise ModelError(f"method {recipe.method.name!r} needs calibration token ids for this model's "
                                 "tokenizer; pass calibration=tensor [samples, seq_len] (or use nmq compress --calibration)")
            calibration = calibration_tokens(calibration or Calibration())
        _compress_blocks(model, recipe, calibration, batch, progress, quantize)
    else:
        for name in progress_bar(names, total=len(names), desc="compress", enabled=progress):
            set_submodule(model, name, _nmq_linear(model.get_submodule(name), recipe, name))
    # The model carries its recipe, as a Hugging Face model carries its quantization_config: save_checkpoint records it.
    model.nmq_recipe = recipe
    return model


@torch.no_grad()
def _compress_blocks(model: torch.nn.Module, recipe: Recipe, tokens: torch.Tensor, batch: int,
                     progress: bool, quantize: bool) -> None:
    """The calibrated run, block by block (module doc)."""
    prefix, blocks = decoder_blocks(model)
    inputs, kwargs = first_block_inputs(model, blocks, tokens, batch)
    bar = BlockBar(len(blocks), progress)
    for bi, block in enumerate(blocks):
        inputs = compress_block(block, f"{prefix}.{bi}", inputs, kwargs, recipe, quantize, bar)
    bar.close()
    compress_outside_blocks(model, prefix, recipe, quantize)


@torch.no_grad()
def compress_block(block: torch.nn.Module, name: str, inputs: list[torch.Tensor], kwargs: list[dict],
                   recipe: Recipe, quantize: bool, bar: BlockBar) -> list[torch.Tensor]:
    """Compress the selected layers of ``block`` (the model's ``name``) in place on its captured ``inputs``;
    returns its outputs, the next block's inputs. The caller's ``inputs`` list is consumed."""
    names = {n: m for n, m in block.named_modules()
             if isinstance(m, torch.nn.Linear) and recipe.selects(f"{name}.{n}")}
    compressed: dict[str, NMQLinear] = {}
    recover = bool(recipe.recover and quantize and names)
    if recover:
        # the targets: the dense block on the inputs the compressed model gives it
        kept_inputs = list(inputs)
        targets = HookedBlock(block, names, kept_inputs, kwargs).outputs()
    # The block run frees each stage's activations as soon as the next stage has them (its own list).
    run = PreNormBlock.recognize(block, names, list(inputs), kwargs) or HookedBlock(block, names, inputs, kwargs)
    if recipe.method.compensates:
        del inputs
        for group, xs in run.groups():
            bar.show(name, group)
            h = gram(xs, names[group[0]].in_features)
            compressed.update(_compress_group({n: names[n] for n in group}, h, recipe, quantize))
        outputs = None if recover else run.outputs()
        del run
    else:
        # Wanda updates no weight, so, as in Wanda's reference code, every layer's statistics (diag(X^T X),
        # all its score uses) come from one run of the block as it arrives (later layers do not see the
        # earlier ones pruned); then the pruned block runs again for the next block's inputs. On the
        # reference model this is 2:4 perplexity 4.48 against 4.57 with each layer seeing the pruned ones
        # before it.
        norms = [(group, squared_norms(xs, names[group[0]].in_features)) for group, xs in run.groups()]
        del run
        for group, d in norms:
            bar.show(name, group)
            compressed.update(_compress_group({n: names[n] for n in group}, d, recipe, quantize))
        del norms
        outputs = None if recover else HookedBlock(block, names, inputs, kwargs).outputs()
    if recover:
        t0 = time.perf_counter()
        index = name.rpartition(".")[2]
        compressed, outputs, before, after = recover_block(block, compressed, kept_inputs, kwargs, targets, recipe,
                                                           seed=int(index) if index.isdigit() else 0,
                                                           note=lambda text: bar.show_text(f"{name} {text}"))
        del targets, kept_inputs
        bar.say(f"{name}: recovery, block output error {before:.4g} -> {after:.4g} "
                f"({recipe.recover} passes, {time.perf_counter() - t0:.0f} s)")
    # Swapped only now: until the block's end, later layers run on the dequantized weights written in place.
    for n, layer in compressed.items():
        set_submodule(block, n, layer)
    bar.step()
    return outputs


def compress_outside_blocks(model: torch.nn.Module, prefix: str, recipe: Recipe, quantize: bool) -> None:
    """Selected linear layers outside the blocks (lm_head when asked): no captured inputs, so magnitude + RTN."""
    outside = replace(recipe, method="magnitude", recover=0)
    for n in target_layers(model, recipe):
        if n.startswith(prefix + "."):
            continue
        lin = model.get_submodule(n)
        if quantize:
            set_submodule(model, n, _nmq_linear(lin, outside, n))
        else:
            lin.weight.data = _pruned(lin, outside, None).to(lin.weight.dtype)


def _compress_group(layers: dict[str, torch.nn.Linear], h: torch.Tensor, recipe: Recipe,
                    quantize: bool) -> dict[str, NMQLinear]:
    """Compress layers sharing one input with their Hessian ``h`` (or its diagonal, for Wanda).

    Each layer's weight is overwritten with what the compressed layer computes, so the layers after it see its
    output; the NMQLinear layers (none when not quantizing) are returned for the caller to swap in. A bits-16
    recipe (``recipe.quant`` None) prunes as ``quantize=False`` does, and its layers store the pruned weight.
    """
    spec = recipe.quant if quantize else None
    kp = padded_k(h.shape[0], recipe.pattern, recipe.group_size)
    h = recipe.method.prepare(padded_hessian(h, kp), recipe.pattern, spec, recipe.damp, recipe.act_order)
    out = {}
    for n, lin in layers.items():
        if spec is not None:
            t = compress_padded(_padded_weight(lin, kp), lin.in_features, recipe, h)
            lin.weight.data = t.to_dense(lin.weight.dtype)
            out[n] = NMQLinear(t, lin.bias)
            continue
        r = _prune(lin, recipe, h, kp)
        lin.weight.data = r.weight[:, : lin.in_features].to(lin.weight.dtype)
        if quantize:
            # The values as the weight holds them now (its dtype's rounding), so the stored layer is this model's.
            weight = torch.nn.functional.pad(lin.weight.data, (0, kp - lin.in_features)).float()
            t = from_mask(weight, r.keep, recipe.pattern, None, recipe.metadata, lin.in_features,
                          source_dtype=lin.weight.dtype)
            out[n] = NMQLinear(t, lin.bias)
    return out


def _nmq_linear(lin: torch.nn.Linear, recipe: Recipe, name: str) -> NMQLinear:
    try:
        return NMQLinear(compress_with(lin.weight, recipe), lin.bias)
    except NMQError as exc:
        raise type(exc)(f"layer {name}: {exc}") from None


def _padded_weight(lin: torch.nn.Linear, kp: int) -> torch.Tensor:
    w = lin.weight.detach().float()
    return torch.nn.functional.pad(w, (0, kp - w.shape[1]))


def _pruned(lin: torch.nn.Linear, recipe: Recipe, h, kp: int | None = None) -> torch.Tensor:
    """``lin``'s weight pruned by the recipe's method (its float values kept, or updated by OBS)."""
    return _prune(lin, recipe, h, kp).weight[:, : lin.in_features]


def _prune(lin: torch.nn.Linear, recipe: Recipe, h, kp: int | None = None) -> LayerResult:
    """:func:`_pruned`'s result, padded, with its keep mask."""
    kp = kp or padded_k(lin.in_features, recipe.pattern, recipe.group_size)
    return compress_layer(_padded_weight(lin, kp), recipe.pattern, None, recipe.method, h, damp=recipe.damp)


class BlockBar:
    """Progress of a calibrated run: blocks done, the group being compressed, seconds so far."""

    def __init__(self, total: int, enabled: bool, done: int = 0) -> None:
        self.bar = None
        self.start = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="calibrate", unit="block", leave=False, dynamic_ncols=True)

    def show(self, block: str, group: list[str]) -> None:
        self.show_text(f"{block} {','.join(g.split('.')[-1] for g in group)}")

    def show_text(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} {time.perf_counter() - self.start:.0f}s")

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
