"""Recovery: after one-shot compression, tune a block's kept values and scales to match the dense block.

Block by block (the compressed model's inputs of the block, the dense block's
outputs on them as targets), with every N:M mask fixed: the kept values and,
for integer codes, the per-group scales are trained with Adam on the mean
squared error of the block's output, relative to the targets' mean square.
Codes come from the values by rounding with a straight-through estimator
(their gradient is the identity inside the code range), and the scales are
rounded to fp16 the same way, so the trained block computes exactly what its
re-encoded layers compute. Zero points stay as the method chose them. Each
layer is then re-encoded from the trained values with the trained scales
(:func:`nmq.compress.weight.from_mask`): same pattern, mask, format and bit
count; only the codes and scales change.

Memory: the block's inputs and targets for all samples, and one micro-batch's
activations for the backward pass. Deterministic: the order of micro-batches
comes from a generator seeded by the block's index.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ..compress.recipe import Recipe
from ..compress.weight import from_mask
from ..format.tensor import NMQTensor
from ..runtime.linear import NMQLinear
from .blocks import block_output

# Adam's step sizes: a value's relative to its layer's mean kept magnitude (layers differ: 0.03-0.2 in
# smollm2-135m), a scale's in log units, both decayed to zero along a cosine. On tiny-llama (2:4 SparseGPT
# INT4, 2 passes): perplexity 3.74 with these, 3.78 with 0.02 / 2e-3 (one-shot 4.37, dense 3.19).
VALUE_LR = 0.05
LOG_SCALE_LR = 5e-3
MICRO_BATCH = 2  # samples per optimizer step


def _round_ste(u: torch.Tensor) -> torch.Tensor:
    return u + (torch.round(u) - u).detach()


class _Layer:
    """One compressed layer's trainable form: kept values ``[out, kept]`` and log-scales ``[out, groups]``."""

    def __init__(self, t: NMQTensor) -> None:
        self.t = t
        self.positions = t.positions()
        self.values = t.dequantized_values().clone().requires_grad_(True)
        self.log_scales = None
        if not t.is_float:
            s = t.scales.float()
            # a zero scale (an all-zero group) stays zero: its log is held at -inf and never trained
            self.live = s > 0
            self.log_scales = torch.where(self.live, s, torch.ones_like(s)).log().requires_grad_(True)
            self.zeros = t.zero_codes().float().unsqueeze(-1)
            self.max_code = (1 << t.bits) - 1

    def params(self) -> list[dict]:
        scale = float(self.values.detach().abs().mean()) or 1.0
        out = [{"params": [self.values], "lr": VALUE_LR * scale}]
        if self.log_scales is not None:
            out.append({"params": [self.log_scales], "lr": LOG_SCALE_LR})
        return out

    def scales(self) -> torch.Tensor:
        """The scales as stored: fp16, the gradient passing straight through the rounding."""
        s = self.log_scales.exp()
        s = s + (s.half().float() - s).detach()
        return torch.where(self.live, s, torch.zeros_like(s))

    def kept(self) -> torch.Tensor:
        """The kept weights as the layer computes them: the values' codes times the scales."""
        t = self.t
        if self.log_scales is None:  # 16-bit float values: rounded to their stored type the same way
            v = self.values
            return v + (v.to(t.value_dtype).float() - v).detach()
        g = self.values.reshape(t.out_features, t.groups, -1)
        s = self.scales().unsqueeze(-1)
        safe = torch.where(s == 0, torch.ones_like(s), s)
        q = (_round_ste(g / safe) + self.zeros).clamp(0, self.max_code)
        return ((q - self.zeros) * s).reshape(t.out_features, -1)

    def dense(self) -> torch.Tensor:
        t = self.t
        w = torch.zeros(t.out_features, t.padded_in, dtype=torch.float32)
        return w.scatter(1, self.positions, self.kept())[:, : t.in_features]

    def encode(self, recipe: Recipe) -> NMQTensor:
        t = self.t
        with torch.no_grad():
            padded = torch.zeros(t.out_features, t.padded_in).scatter_(1, self.positions, self.values)
            keep = torch.zeros(t.out_features, t.padded_in, dtype=torch.bool)
            keep.scatter_(1, self.positions, True)
            if t.is_float:  # from_mask picks the value type from the source's: the stored one maps to itself
                return from_mask(padded, keep, t.pattern, None, t.metadata, t.in_features, source_dtype=t.value_dtype)
            scales = self.scales().half()
            zeros = None if t.symmetric else t.zero_codes()
            return from_mask(padded, keep, t.pattern, recipe.quant, t.metadata, t.in_features, scales, zeros)


def recover_block(block: torch.nn.Module, layers: dict[str, NMQLinear], inputs: list[torch.Tensor],
                  kwargs: list[dict], targets: list[torch.Tensor], recipe: Recipe, seed: int,
                  note: Callable[[str], None] | None = None
                  ) -> tuple[dict[str, NMQLinear], list[torch.Tensor], float, float]:
    """Tune ``layers`` (the block's compressed layers by name, their dense weights still in the block) for
    ``recipe.recover`` passes over the samples. Sets each layer's ``nn.Linear`` weight to what the re-encoded
    layer computes and returns (re-encoded layers, the block's outputs on ``inputs`` with them, relative error
    before, after); where the tuned block is no better on the samples, the layers it came with (after =
    before)."""
    trained = {n: _Layer(layer.nmq_weight) for n, layer in layers.items()}
    dtypes = {n: block.get_submodule(n).weight.dtype for n in layers}
    chunks = _micro_batches(inputs, kwargs, targets)
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        before, _ = _run(block, chunks)
        opt = torch.optim.Adam([g for t in trained.values() for g in t.params()])
        gen = torch.Generator().manual_seed(seed)
        steps = recipe.recover * len(chunks)
        # cosine decay to zero: Adam's first steps move every value by about its rate, and the codes need the
        # small late steps to settle
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        start = time.perf_counter()
        for step in range(steps):
            x, kw, y = chunks[int(torch.randint(len(chunks), (), generator=gen))]
            with torch.enable_grad():
                weights = {f"{n}.weight": t.dense().to(dtypes[n]) for n, t in trained.items()}
                out = block_output(torch.func.functional_call(block, weights, (x,), kw))
                loss = (out.float() - y).pow(2).mean() / y.pow(2).mean().clamp_min(1e-30)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
            if note is not None and (step % 8 == 0 or step == steps - 1):
                eta = (time.perf_counter() - start) / (step + 1) * (steps - step - 1)
                note(f"recover {step + 1}/{steps} loss {loss.item():.4g} eta {eta:.0f}s")
        encoded = {n: t.encode(recipe) for n, t in trained.items()}
        _set_weights(block, encoded)
        after, outs = _run(block, chunks)
        if not after < before:
            # never worse than one-shot on the calibration samples: the block keeps the layers it came with
            _set_weights(block, {n: layer.nmq_weight for n, layer in layers.items()})
            _, outs = _run(block, chunks)
            layers_out, after = dict(layers), before
        else:
            layers_out = {n: NMQLinear(t, layers[n].bias) for n, t in encoded.items()}
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return layers_out, _rebatch(outs, inputs), before, after


def _set_weights(block: torch.nn.Module, tensors: dict[str, NMQTensor]) -> None:
    for n, t in tensors.items():
        lin = block.get_submodule(n)
        lin.weight.data = t.to_dense(lin.weight.dtype)


def _micro_batches(inputs, kwargs, targets) -> list[tuple[torch.Tensor, dict, torch.Tensor]]:
    """The captured batches split into ``MICRO_BATCH`` samples each (kwargs sliced where batched)."""
    out = []
    for x, kw, y in zip(inputs, kwargs, targets):
        b = x.shape[0]
        for i in range(0, b, MICRO_BATCH):
            part = {k: _slice(v, i, b) for k, v in kw.items()}
            out.append((x[i : i + MICRO_BATCH], part, y[i : i + MICRO_BATCH].float()))
    return out


def _slice(v, i: int, b: int):
    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b and b > 1:
        return v[i : i + MICRO_BATCH]
    if isinstance(v, tuple):
        return tuple(_slice(u, i, b) for u in v)
    return v


@torch.no_grad()
def _run(block, chunks) -> tuple[float, list[torch.Tensor]]:
    """The block's outputs on every micro-batch, and their squared error relative to the targets'."""
    num = den = 0.0
    outs = []
    for x, kw, y in chunks:
        out = block_output(block(x, **kw))
        num += float((out.float() - y).pow(2).sum())
        den += float(y.pow(2).sum())
        outs.append(out)
    return (num / den if den else math.nan), outs


def _rebatch(outs: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Micro-batch outputs joined back into the batches of ``inputs`` (the next block's inputs)."""
    joined, i = [], 0
    for x in inputs:
        parts = -(-x.shape[0] // MICRO_BATCH)
        joined.append(torch.cat(outs[i : i + parts]))
        i += parts
    return joined
