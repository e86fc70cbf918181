"""The layer a board checks: picked, sliced to fit on chip, turned into ROM images.

With no checkpoint the layer is one of the built-in ``tiny-llama``'s linear
weights, compressed 2:4 INT4 with the magnitude method (no calibration data,
so it is fast and deterministic); with a checkpoint written by ``nmq
compress``, its named compressed layer. Either way the tensor is cut to a
few output rows and whole quantization groups of inputs, so the board's
ROMs stay small. The cut keeps the stored codes, positions, scales and zero
points bit for bit: only whole rows and whole groups are taken.

The image holds each stream's beats as integers (for ``Memory(init=...)``),
the runtime register struct as one integer and the expected result beats:
the reference's partial sums laid out in the design's result order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...backends.reference import partial_sums, quantized_activations
from ...compress.weight import compress_weight
from ...errors import NMQError
from ...format import bitpack
from ...format.load import load_file
from ...format.tensor import NMQTensor, encode_meta
from ...models.builtin import weights_path
from ...models.checkpoint import read_record
from ..config import AcceleratorConfig, HardwareError
from ..estimate.cycle_model import layer_cycles
from ..sim.streams import Streams, build_streams

BUILTIN = "tiny-llama"
DEFAULT_LAYER = "model.layers.0.mlp.down_proj"
DEFAULT_ROWS = 16
DEFAULT_INPUTS = 256
DEFAULT_TOKENS = 8


def builtin_layer(layer: str | None) -> tuple[str, NMQTensor]:
    """A linear weight of the built-in model, compressed 2:4, 4-bit, groups of 128, magnitude pruning."""
    from safetensors import safe_open

    name = _strip(layer or DEFAULT_LAYER)
    # Only the one tensor is read: the whole model (and transformers) is not needed for a weight.
    with safe_open(str(weights_path(BUILTIN)), "pt") as f:
        stored = f.keys()
        names = [k.removesuffix(".weight") for k in stored
                 if k.startswith("model.layers.") and k.endswith("proj.weight")]
        if name not in names:
            raise HardwareError(f"{BUILTIN}: no linear layer {layer!r}; accepted: {_listing(names)}")
        w = f.get_tensor(name + ".weight").float()
    return name, compress_weight(w, pattern="2:4", bits=4, group_size=128, method="magnitude")


def checkpoint_layer(ckpt: str | Path, layer: str | None) -> tuple[str, NMQTensor]:
    """The compressed layer ``layer`` of a checkpoint directory written by ``nmq compress``."""
    try:
        record = read_record(ckpt)
    except NMQError as exc:
        raise HardwareError(str(exc)) from None
    names = list(record["compressed_layers"])
    if not layer:
        raise HardwareError(f"{ckpt}: a checkpoint needs a layer name; accepted: {_listing(names)}")
    name = _strip(layer)
    if name not in names:
        raise HardwareError(f"{ckpt}: no compressed layer {layer!r}; accepted: {_listing(names)}")
    try:
        return name, load_file(Path(ckpt) / record["tensors"]).compressed[name]
    except (NMQError, KeyError) as exc:
        raise HardwareError(f"{ckpt}: cannot read layer {name!r} ({exc})") from None


def _strip(name: str) -> str:
    return name.removesuffix(".weight")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def slice_tensor(t: NMQTensor, rows: int, inputs: int) -> NMQTensor:
    """The first ``rows`` output rows and the first whole quantization groups within ``inputs`` columns."""
    if rows < 1 or inputs < 1:
        raise HardwareError(f"board slice {rows} x {inputs}: accepted at least one row and one input")
    out = min(rows, t.out_features)
    if t.group_size == -1 or t.group >= t.padded_in:
        groups = t.groups            # one group per row cannot be cut without changing its scale
    else:
        groups = max(1, min(t.groups, inputs // t.group))
    if out == t.out_features and groups == t.groups:
        return t
    g, p = t.group, t.pattern
    kept_per_group = g // p.m * p.n
    codes = t.codes()[:out, : groups * kept_per_group]
    pos = t.group_positions()[:out, : groups * g // p.m]
    in_features = min(t.in_features, groups * g) if groups < t.groups else t.in_features
    zeros = None if t.zeros is None else bitpack.pack(t.zero_codes()[:out, :groups], t.bits)
    cut = NMQTensor((out, in_features), p, t.bits, t.group_size, t.symmetric, t.metadata,
                    bitpack.pack(codes, t.bits), encode_meta(pos, p, t.metadata),
                    t.scales[:out, :groups].contiguous(), zeros)
    return cut.validate("board slice")


def words_to_ints(words: np.ndarray, bits: int) -> list[int]:
    """Each row of little-endian 32-bit words as one integer of ``bits`` bits (the port's beat)."""
    mask = (1 << bits) - 1
    return [int.from_bytes(row.tobytes(), "little") & mask for row in np.ascontiguousarray(words, "<u4")]


def result_words(p: torch.Tensor, s: Streams) -> np.ndarray:
    """Partial sums ``P [tokens, out, groups]`` as result words ``[beats, rows]``: the inverse of ``unpack_results``."""
    c = s.cfg
    full = np.zeros((s.token_tiles * c.cols, s.row_tiles * c.rows, s.groups), np.int32)
    full[: s.tokens, : s.out_features] = p.numpy()
    full = full.reshape(s.token_tiles, c.cols, s.row_tiles, c.rows, s.groups).transpose(0, 2, 4, 1, 3)
    return np.ascontiguousarray(full).reshape(s.result_beats, c.rows).view("<u4")


@dataclass
class BoardImage:
    """What the board's ROMs hold for one layer and its tokens."""

    cfg: AcceleratorConfig
    layer: str
    tensor: NMQTensor
    q: torch.Tensor                 # int8 activations [tokens, padded_in]
    expected_sums: torch.Tensor     # int32 P [tokens, out, groups]
    streams: Streams
    weights: list[int]
    zeros: list[int]
    acts: list[int]
    expected: list[int]             # result beats, corruptions applied
    regs: int
    model_cycles: int
    corrupt: tuple[int, ...] = field(default=())

    @property
    def tokens(self) -> int:
        return self.q.shape[0]

    def roms(self) -> dict[str, tuple[int, int]]:
        """``name: (width, depth)`` of every ROM."""
        c = self.cfg
        return {"w": (c.weight_beat_bits, len(self.weights)), "z": (c.zero_beat_bits, len(self.zeros)),
                "a": (c.act_beat_bits, len(self.acts)), "expected": (c.result_beat_bits, len(self.expected))}

    def rom_bits(self) -> int:
        return sum(w * d for w, d in self.roms().values())

    def rom_blocks(self) -> int:
        """DP16KD blocks (18 Kb) the ROMs take at most, each in its cheapest width x depth mode.

        An upper bound: synthesis drops ROM bits that are constant (the
        activation lanes at and above M, for one), so it may use fewer.
        """
        modes = [(36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)]
        return sum(min(-(-w // mw) * -(-d // md) for mw, md in modes) for w, d in self.roms().values())


def board_image(cfg: AcceleratorConfig, name: str, t: NMQTensor, tokens: int, seed: int = 0,
                corrupt: tuple[int, ...] = ()) -> BoardImage:
    """Streams, registers and expected result beats of ``t`` on ``tokens`` seeded random tokens."""
    if not isinstance(tokens, int) or tokens < 1:
        raise HardwareError(f"board tokens {tokens!r}: accepted a positive integer")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, t.in_features, generator=g)
    q, _ = quantized_activations(x, t)
    p, _ = partial_sums(x, t)
    s = build_streams(t, q, cfg)
    words = result_words(p, s)
    expected = words_to_ints(words, cfg.result_beat_bits)
    for i in corrupt:
        if not 0 <= i < len(expected):
            raise HardwareError(f"corrupt beat {i}: out of range; accepted 0..{len(expected) - 1}")
        expected[i] ^= 1          # row 0's partial sum off by its low bit: one beat, one mismatch
    regs = int.from_bytes(s.register_words().tobytes(), "little")
    model = layer_cycles(cfg, t.out_features, t.padded_in, tokens, t.pattern.n, t.pattern.m, t.group)
    return BoardImage(cfg, name, t, q, p, s,
                      words_to_ints(s.weight_words(), cfg.weight_beat_bits),
                      words_to_ints(s.zero_words(), cfg.zero_beat_bits),
                      words_to_ints(s.act_words(), cfg.act_beat_bits),
                      expected, regs, model.compute_cycles, tuple(corrupt))
