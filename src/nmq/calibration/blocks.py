"""Decoder blocks of a causal LM: finding them, capturing their inputs, and running them for calibration.

A block run yields, for each group of target layers that share an input (q/k/v,
then o, then gate/up, then down for LLaMA), the chunks of that input over the
calibration samples, with the layers before the group as they are by then
(compressed, when the caller has compressed them); then the block's outputs,
the next block's inputs. A LLaMA-style block is run stage by stage
(:class:`PreNormBlock`), each layer once per sample; any other block is re-run
up to each group's input (:class:`HookedBlock`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from ..errors import ModelError


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


def first_block_inputs(model, blocks, tokens, batch):
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


def input_groups(block, names, x, kw) -> list[list[str]]:
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


class HookedBlock:
    """Any block: each group's inputs come from running the block (already-compressed layers included) up to it."""

    def __init__(self, block, names, inputs, kwargs) -> None:
        self.block, self.names, self.inputs, self.kwargs = block, names, inputs, kwargs

    def groups(self) -> Iterator[tuple[list[str], Iterable[torch.Tensor]]]:
        for group in input_groups(self.block, self.names, self.inputs[0], self.kwargs[0]):
            lin = self.names[group[0]]
            yield group, (_input_of(lin, lambda: self.block(x, **kw)) for x, kw in zip(self.inputs, self.kwargs))

    def outputs(self) -> list[torch.Tensor]:
        return [block_output(self.block(x, **kw)) for x, kw in zip(self.inputs, self.kwargs)]


class PreNormBlock:
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
    def recognize(cls, block, names, inputs, kwargs) -> "PreNormBlock | None":
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
            ref = block_output(block(x, **kw))
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


def block_output(out):
    return out[0] if isinstance(out, tuple) else out
