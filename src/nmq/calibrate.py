"""Calibrated compression of a whole model, block by block.

1. Calibration samples: token windows drawn (seeded) from text.
2. The inputs of the first decoder block are captured by running the
   embeddings only.
3. For each block, its linear layers are compressed in execution order,
   grouped by shared input (q/k/v, then o, then gate/up, then down for
   LLaMA): a pass over the samples accumulates the group's Hessian
   ``X^T X`` with the earlier groups already compressed, then each layer of
   the group is compressed with it. A final pass gives the block's outputs,
   which are the next block's inputs, and the block's activations are freed.

Peak memory is the model plus one block's inputs and outputs for all samples
plus one Hessian.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .compress import compress_padded
from .corpus import stdlib_split
from .errors import ModelError
from .linear import NMQLinear
from .methods import compress_layer, parse_method, prepare_for
from .model import set_submodule
from .pattern import Pattern
from .quant import QuantSpec
from .recipe import Recipe
from .tensor import padded_k


@dataclass(frozen=True)
class Calibration:
    """Where calibration samples come from and how many: ``samples`` windows of ``seq_len`` tokens."""

    samples: int = 128
    seq_len: int = 512
    text: str | None = None  # a text file or directory of .txt/.py files; None: the standard library's training split
    seed: int = 0
    batch: int = 8


def calibration_tokens(cal: Calibration, tokenizer=None) -> torch.Tensor:
    """``[samples, seq_len]`` token ids: random windows (seeded) of the calibration text.

    ``tokenizer`` is one of :mod:`nmq.text`'s (None: byte-level, tokens are UTF-8 bytes).
    """
    if cal.samples < 1 or cal.seq_len < 2:
        raise ModelError(f"calibration of {cal.samples} x {cal.seq_len} tokens; accepted: at least 1 sample of 2 tokens")
    if cal.text is None:
        raw = stdlib_split()[0]
    else:
        path = Path(cal.text)
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".py", ".md")) if path.is_dir() else [path]
        if not files or not all(p.is_file() for p in files):
            raise ModelError(f"calibration text {path} not found; accepted: a text file or a directory of .txt/.py/.md files")
        raw = b"\n\n".join(p.read_bytes() for p in files)
    if tokenizer is None:
        ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    else:
        ids = torch.tensor(tokenizer.encode(raw), dtype=torch.long)
    if len(ids) <= cal.seq_len:
        raise ModelError(f"calibration text has {len(ids)} tokens; needs more than seq_len={cal.seq_len}")
    gen = torch.Generator().manual_seed(cal.seed)
    starts = torch.randint(0, len(ids) - cal.seq_len, (cal.samples,), generator=gen)
    return torch.stack([ids[s : s + cal.seq_len] for s in starts.tolist()])


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


def decoder_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's list of decoder blocks (the largest ModuleList holding linear layers)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and any(isinstance(m, torch.nn.Linear) for m in mod[0].modules()):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ModelError("cannot find the model's decoder blocks (a ModuleList of layers with nn.Linear)")
    return best


@torch.no_grad()
def compress_model_calibrated(
    model: torch.nn.Module,
    recipe: Recipe,
    tokens: torch.Tensor,
    batch: int = 8,
    progress: bool = True,
    quantize: bool = True,
) -> torch.nn.Module:
    """Compress ``model`` in place with a calibrated method, block by block (see module doc).

    With ``quantize=False`` the layers are only pruned (with the method's
    updates) and stay ``nn.Linear``: the pruning-only rows of the accuracy table.
    """
    method = parse_method(recipe.method)
    pattern = Pattern.parse(recipe.pattern)
    spec = QuantSpec(recipe.bits, recipe.group_size, recipe.symmetric) if quantize else None
    prefix, blocks = decoder_blocks(model)
    inputs, kwargs = _first_block_inputs(model, blocks, tokens, batch)
    start = time.perf_counter()
    bar = _Bar(len(blocks), progress)
    for bi, block in enumerate(blocks):
        names = {n: m for n, m in block.named_modules()
                 if isinstance(m, torch.nn.Linear) and recipe.selects(f"{prefix}.{bi}.{n}")}
        for group in _input_groups(block, names, inputs[0], kwargs[0]):
            bar.show(bi, group, start)
            h = _accumulate_hessian(block, names[group[0]], inputs, kwargs)
            kp = padded_k(h.shape[0], pattern, recipe.group_size)
            h = prepare_for(method, pattern, spec, _padded_hessian(h, kp), recipe.damp, recipe.act_order)
            for n in group:
                _compress_in_place(block, n, names[n], h, pattern, spec, method, recipe, quantize)
            del h
        outputs = [_block_out(block(x, **kw)) for x, kw in zip(inputs, kwargs)]
        if quantize:
            for n, lin in names.items():
                set_submodule(block, n, lin._nmq_layer)
                del lin._nmq_layer
        inputs = outputs
    bar.close()
    # Linear layers outside the blocks (lm_head when asked) have no captured inputs: magnitude + RTN.
    outside = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and recipe.selects(n)]
    for n in outside:
        lin = model.get_submodule(n)
        if quantize:
            set_submodule(model, n, NMQLinear.from_linear(lin, **{**recipe.compress_kwargs(), "method": "magnitude"}))
        else:
            lin.weight.data = compress_layer(lin.weight.float(), pattern, None, parse_method("magnitude")).weight
    model.nmq_recipe = recipe
    return model


def _compress_in_place(block, name, lin, h, pattern, spec, method, recipe, quantize):
    w = lin.weight.detach().float()
    out, k = w.shape
    kp = padded_k(k, pattern, recipe.group_size)
    wp = torch.nn.functional.pad(w, (0, kp - k))
    if quantize:
        t = compress_padded(wp, k, pattern, spec, recipe.metadata, method, h, recipe.damp, recipe.act_order)
        # Later layers see this layer's compressed output; the swap to NMQLinear waits for the block's end.
        lin.weight.data = t.to_dense(lin.weight.dtype)
        lin._nmq_layer = NMQLinear(t, lin.bias)
    else:
        r = compress_layer(wp, pattern, None, method, h, damp=recipe.damp)
        lin.weight.data = r.weight[:, :k].to(lin.weight.dtype)


def _first_block_inputs(model, blocks, tokens, batch):
    inputs, kwargs = [], []

    def grab(module, args, kw):
        inputs.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, tokens.shape[0], batch):
            try:
                model(input_ids=tokens[i : i + batch], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return inputs, kwargs


def _input_groups(block, names, x, kw) -> list[list[str]]:
    """Target layers grouped by shared input tensor, in the order the block runs them."""
    # The inputs are held until the pass ends, so a freed tensor's address cannot be reused by a later one.
    seen: list[tuple[torch.Tensor, list[str]]] = []
    handles = []
    for n, lin in names.items():
        def note(module, args, n=n):
            for t, group in seen:
                if args[0] is t or (args[0].data_ptr() == t.data_ptr() and args[0].shape == t.shape):
                    group.append(n)
                    return
            seen.append((args[0], [n]))
        handles.append(lin.register_forward_pre_hook(note))
    try:
        block(x, **kw)
    finally:
        for h in handles:
            h.remove()
    return [g for _, g in seen]


def _accumulate_hessian(block, lin, inputs, kwargs) -> torch.Tensor:
    k = lin.in_features
    h = torch.zeros(k, k)

    def add(module, args):
        x = args[0].reshape(-1, k).float()
        h.addmm_(x.T, x)
        raise _Stop

    handle = lin.register_forward_pre_hook(add)
    try:
        for x, kw in zip(inputs, kwargs):
            try:
                block(x, **kw)
            except _Stop:
                pass
    finally:
        handle.remove()
    return h


def _padded_hessian(h: torch.Tensor, kp: int) -> torch.Tensor:
    k = h.shape[0]
    return torch.nn.functional.pad(h, (0, kp - k, 0, kp - k)) if kp != k else h


def _block_out(out):
    return out[0] if isinstance(out, tuple) else out


class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="calibrate", unit="block", leave=False, dynamic_ncols=True)
        self.last = -1

    def show(self, block: int, group: list[str], start: float) -> None:
        if self.bar is None:
            return
        if block != self.last:
            self.bar.update(block - max(self.last, 0) if self.last >= 0 else 0)
            self.last = block
        self.bar.set_postfix_str(f"block {block + 1}/{self.bar.total} {','.join(g.split('.')[-1] for g in group)} "
                                 f"{time.perf_counter() - start:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
