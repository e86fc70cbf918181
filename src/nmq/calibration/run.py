"""Calibrated compression of a whole model, block by block.

1. Calibration samples: token windows drawn (seeded) from text.
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

A LLaMA-style block is run stage by stage (:class:`_PreNormBlock`), each
layer once per sample; any other block is re-run up to each group's input
(:class:`_HookedBlock`). Peak memory is the model plus one block's
activations for all samples plus one Hessian.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch

from ..backends.cpu.gram import add_gram_bf16, gram_bf16_available, padded_features
from ..compress.methods import compress_layer, parse_method, prepare_for
from ..compress.recipe import Recipe
from ..compress.weight import compress_padded
from ..errors import ModelError, NMQError
from ..format.pattern import Pattern
from ..format.spec import QuantSpec
from ..format.tensor import padded_k
from ..progress import progress as progress_bar
from ..runtime.linear import NMQLinear
from ..runtime.modules import set_submodule, target_layers
from .data import Calibration, calibration_tokens


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


def compress_model(model: torch.nn.Module, recipe: Recipe | dict | None = None, calibration=None,
                   progress: bool = True) -> torch.nn.Module:
    """Replace the selected ``nn.Linear`` layers of ``model`` by NMQLinear, in place; returns ``model``.

    Calibrated methods (wanda, sparsegpt, gptq) run block by block over
    ``calibration``: token ids ``[samples, seq_len]``, or a
    :class:`nmq.calibration.data.Calibration` (default: 128 x 512 tokens of the
    standard library's source, for byte-level models).

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
    if recipe.needs_calibration:
        if not isinstance(calibration, torch.Tensor):
            if getattr(model.config, "vocab_size", None) != 256:
                raise ModelError(f"method {recipe.method!r} needs calibration token ids for this model's tokenizer; "
                                 "pass calibration=tensor [samples, seq_len] (or use nmq compress --calibration)")
            calibration = calibration_tokens(calibration or Calibration())
        return compress_model_calibrated(model, recipe, calibration, progress=progress)
    names = target_layers(model, recipe)
    if not names:
        raise ModelError(f"no linear layer matches targets {recipe.targets!r} outside ignore {list(recipe.ignore)}")
    for name in progress_bar(names, total=len(names), desc="compress", enabled=progress):
        linear = model.get_submodule(name)
        try:
            layer = NMQLinear.from_linear(linear, **recipe.compress_kwargs())
        except NMQError as exc:
            raise type(exc)(f"layer {name}: {exc}") from None
        set_submodule(model, name, layer)
    model.nmq_recipe = recipe
    return model


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
        # The block run frees each stage's activations as soon as the next stage has them (its own list).
        run = _PreNormBlock.recognize(block, names, list(inputs), kwargs) or _HookedBlock(block, names, inputs, kwargs)
        if method.compensates:
            del inputs
            for group, xs in run.groups():
                bar.show(bi, group, start)
                _compress_group(block, group, names, _gram(xs, names[group[0]].in_features), method, pattern, spec,
                                recipe, quantize)
            inputs = run.outputs()
        else:
            # Wanda updates no weight, so, as in Wanda's reference code, every layer's statistics (diag(X^T X),
            # all its score uses) come from one run of the block as it arrives (later layers do not see the
            # earlier ones pruned); then the pruned block runs again for the next block's inputs. On the
            # reference model this is 2:4 perplexity 4.48 against 4.57 with each layer seeing the pruned ones
            # before it.
            norms = [(group, _squared_norms(xs, names[group[0]].in_features)) for group, xs in run.groups()]
            del run
            for group, d in norms:
                bar.show(bi, group, start)
                _compress_group(block, group, names, d, method, pattern, spec, recipe, quantize)
            del norms
            inputs = _HookedBlock(block, names, inputs, kwargs).outputs()
        if quantize:
            for n, lin in names.items():
                set_submodule(block, n, lin._nmq_layer)
                del lin._nmq_layer
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


def _compress_group(block, group, names, h, method, pattern, spec, recipe, quantize):
    """Compress the layers of ``group`` (one shared input) with their Hessian ``h`` (or its diagonal, for Wanda)."""
    kp = padded_k(h.shape[0], pattern, recipe.group_size)
    h = prepare_for(method, pattern, spec, _padded_hessian(h, kp), recipe.damp, recipe.act_order)
    for n in group:
        _compress_in_place(block, n, names[n], h, pattern, spec, method, recipe, quantize)


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


def _squared_norms(chunks: Iterable[torch.Tensor], k: int) -> torch.Tensor:
    """``diag(X^T X)`` (fp32) over chunks of ``X [..., k]``."""
    d = torch.zeros(k)
    for x in chunks:
        d += x.reshape(-1, k).float().square().sum(0)
    return d


def _gram(chunks: Iterable[torch.Tensor], k: int, block: int = 1024) -> torch.Tensor:
    """``X^T X`` in fp32 over chunks of ``X [..., k]``.

    Only the blocks on and above the diagonal are multiplied (the lower
    triangle is mirrored at the end): about half the FLOPs of ``x.T @ x``,
    which for a 7B MLP's 11008-wide input is most of calibration's time.
    bf16 chunks go to :func:`nmq.backends.cpu.gram.add_gram_bf16` where the
    CPU has bf16 dot products (exact products, fp32 sums, ~4x the fp32 rate).
    """
    h = hb = None
    for x in chunks:
        x = x.reshape(-1, k)
        if x.dtype == torch.bfloat16 and gram_bf16_available():
            if hb is None:
                hb = torch.zeros(padded_features(k), padded_features(k))
            add_gram_bf16(hb, x)
            continue
        x = x.float()
        if h is None:
            h = torch.zeros(k, k)
        for i in range(0, k, block):
            h[i : i + block, i:].addmm_(x[:, i : i + block].T, x[:, i:])
    if hb is not None:
        h = hb[:k, :k].clone() if h is None else h.add_(hb[:k, :k])
        del hb
    if h is None:
        h = torch.zeros(k, k)
    h.triu_()
    h += h.triu(1).T
    return h


def _input_of(lin: torch.nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """What ``lin`` receives when ``run()`` runs; the run stops there."""
    got: list[torch.Tensor] = []

    def grab(module, args):
        got.append(args[0])
        raise _Stop

    handle = lin.register_forward_pre_hook(grab)
    try:
        run()
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise ModelError(f"the block never calls {type(lin).__name__}({lin.in_features} -> {lin.out_features})")
    return got[0]


class _HookedBlock:
    """Any block: each group's inputs come from running the block (already-compressed layers included) up to it."""

    def __init__(self, block, names, inputs, kwargs) -> None:
        self.block, self.names, self.inputs, self.kwargs = block, names, inputs, kwargs

    def groups(self) -> Iterator[tuple[list[str], Iterable[torch.Tensor]]]:
        for group in _input_groups(self.block, self.names, self.inputs[0], self.kwargs[0]):
            lin = self.names[group[0]]
            yield group, (_input_of(lin, lambda: self.block(x, **kw)) for x, kw in zip(self.inputs, self.kwargs))

    def outputs(self) -> list[torch.Tensor]:
        return [_block_out(self.block(x, **kw)) for x, kw in zip(self.inputs, self.kwargs)]


class _PreNormBlock:
    """A LLaMA-style block run stage by stage, so that every linear layer runs once per sample.

    ``h = x + attn(norm1(x))``, ``out = h + mlp(norm2(h))``: the inputs of
    q/k/v, o, gate/up and down are computed in turn and kept (x, then h and
    the MLP's inner activations) instead of re-running the block's prefix for
    each group, which costs 2.35 forwards of a LLaMA block instead of one.
    Used only when the block has these parts and a staged run of the first
    chunk reproduces the block's own output.
    """

    PARTS = {"self_attn": "input_layernorm", "mlp": "post_attention_layernorm"}

    def __init__(self, block, names, inputs, kwargs) -> None:
        self.block, self.names, self.inputs, self.kwargs = block, names, inputs, kwargs
        self.attn, self.mlp = block.self_attn, block.mlp
        self._last: tuple[list, list] | None = None  # h and down's inputs, for outputs()

    @classmethod
    def recognize(cls, block, names, inputs, kwargs) -> "_PreNormBlock | None":
        """The staged runner when the first chunk, run both ways, gives every layer the same input and the same output."""
        if not all(isinstance(getattr(block, p, None), torch.nn.Module) for p in (*cls.PARTS, *cls.PARTS.values())) \
                or not isinstance(getattr(block.self_attn, "o_proj", None), torch.nn.Linear) \
                or not isinstance(getattr(block.mlp, "down_proj", None), torch.nn.Linear) \
                or any(n.split(".")[0] not in cls.PARTS for n in names):
            return None
        run = cls(block, names, inputs, kwargs)
        x, kw = inputs[0], kwargs[0]
        seen: dict[str, torch.Tensor] = {}

        def note(module, args, n):
            seen.setdefault(n, args[0])

        handles = [lin.register_forward_pre_hook(lambda m, args, n=n: note(m, args, n)) for n, lin in names.items()]
        try:
            ref = _block_out(block(x, **kw))
        finally:
            for handle in handles:
                handle.remove()
        try:
            a = run._o_input(x, kw)
            h = run._mid(x, a)
            m = run._down_input(h)
            staged = {"qkv": block.input_layernorm(x), "o": a, "gu": block.post_attention_layernorm(h), "down": m,
                      "out": run._out(h, m)}
        except (ModelError, TypeError, RuntimeError):
            return None

        def close(u, v):
            return u.shape == v.shape and bool((u - v).abs().max() <= 1e-3 * v.abs().max())

        stage = {n: ("o" if n == "self_attn.o_proj" else "down" if n == "mlp.down_proj" else
                     "qkv" if n.startswith("self_attn.") else "gu") for n in names}
        ok = close(staged["out"], ref) and all(n in seen and close(staged[stage[n]], seen[n]) for n in names)
        return run if ok else None

    def _o_input(self, x, kw):
        return _input_of(self.attn.o_proj, lambda: self.attn(hidden_states=self.block.input_layernorm(x), **kw))

    def _mid(self, x, a):
        return x + self.attn.o_proj(a)

    def _down_input(self, h):
        return _input_of(self.mlp.down_proj, lambda: self.mlp(self.block.post_attention_layernorm(h)))

    def _out(self, h, m):
        return h + self.mlp.down_proj(m)

    def _group(self, part: str, inner: bool) -> list[str]:
        last = "self_attn.o_proj" if part == "self_attn" else "mlp.down_proj"
        return [n for n in self.names if n.startswith(part + ".") and (n == last) == inner]

    def groups(self) -> Iterator[tuple[list[str], Iterable[torch.Tensor]]]:
        xs, kws = self.inputs, self.kwargs
        norm1, norm2 = self.block.input_layernorm, self.block.post_attention_layernorm
        if group := self._group("self_attn", False):
            yield group, (norm1(x) for x in xs)
        a = [self._o_input(x, kw) for x, kw in zip(xs, kws)]
        if group := self._group("self_attn", True):
            yield group, a
        hs = []
        for i in range(len(xs)):
            hs.append(self._mid(xs[i], a[i]))
            xs[i] = a[i] = None  # the block's inputs are not needed again
        if group := self._group("mlp", False):
            yield group, (norm2(h) for h in hs)
        m = [self._down_input(h) for h in hs]
        if group := self._group("mlp", True):
            yield group, m
        self._last = hs, m

    def outputs(self) -> list[torch.Tensor]:
        """The block's outputs, with its layers as they are now (down_proj's last)."""
        assert self._last is not None, "groups() runs first"
        hs, m = self._last
        out = []
        for i in range(len(hs)):
            out.append(self._out(hs[i], m[i]))
            hs[i] = m[i] = None
        return out


def _padded_hessian(h: torch.Tensor, kp: int) -> torch.Tensor:
    """``h [K, K]`` (or its diagonal ``[K]``) with zeros for the padded inputs."""
    k = h.shape[0]
    return torch.nn.functional.pad(h, (0, kp - k) * h.dim()) if kp != k else h


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
