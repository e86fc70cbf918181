"""Tiling an NMQTensor and int8 activations onto the array as beat streams.

The array computes ``rows`` output channels for ``cols`` tokens at a time (a
*pass*). Passes run back to back: for every token tile, for every row tile,
the pass's quantization groups in ascending order. Each group is
``windows = group / M`` M-groups, each M-group ``N`` steps (one kept weight
per row per step). Output rows and tokens are padded with zeros up to whole
tiles; padding rows carry code = zero = 0, so they contribute nothing.

With an activation buffer in the design (``act_buffer_depth`` at least the
M-groups of one pass), the activations of a token tile are streamed once
and the array replays them for the other row tiles.

Beats are packed little end first into 32-bit words, exactly as the port
layouts of ``rtl/layouts.py`` lay them out, so the Verilator harness copies
words and never touches bits. The runtime registers (the ``ctl_regs`` struct)
are packed the same way, from ``AcceleratorConfig.register_fields``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...format.tensor import NMQTensor
from ..config import WINDOW_BITS, AcceleratorConfig, HardwareError


@dataclass
class Streams:
    """The beat streams of one layer run and what is needed to read the results back."""

    cfg: AcceleratorConfig
    n: int
    m: int
    windows: int           # M-groups per quantization group
    groups: int            # quantization groups per pass
    row_tiles: int
    token_tiles: int
    out_features: int
    tokens: int
    w_code: np.ndarray     # [steps, rows]
    w_pos: np.ndarray      # [steps, rows]
    zeros: np.ndarray      # [total groups, rows]
    acts: np.ndarray       # [M-groups streamed, cols, max_m] int8
    reuse: bool = False    # activations streamed once per token tile, replayed from the buffer

    @property
    def passes(self) -> int:
        return self.row_tiles * self.token_tiles

    @property
    def total_groups(self) -> int:
        return self.passes * self.groups

    @property
    def result_beats(self) -> int:
        return self.total_groups * self.cfg.cols

    def registers(self) -> dict[str, int]:
        """The fields of the design's runtime registers (``regs`` of its control interface)."""
        return {"n": self.n, "m": self.m, "windows": self.windows, "groups": self.total_groups,
                "row_tiles": self.row_tiles if self.reuse else 1, "pass_windows": self.groups * self.windows}

    def register_words(self) -> np.ndarray:
        """The registers as the ``ctl_regs`` port's 32-bit words, fields in layout order from the low bit."""
        value, lo = 0, 0
        regs = self.registers()
        for name, width in self.cfg.register_fields.items():
            if not 0 <= regs[name] < 1 << width:
                raise HardwareError(f"runtime register {name}={regs[name]} does not fit its {width} bits")
            value |= regs[name] << lo
            lo += width
        return np.frombuffer(value.to_bytes(-(-lo // 32) * 4, "little"), "<u4")

    # -- word images of the ports ---------------------------------------------

    def weight_words(self) -> np.ndarray:
        c = self.cfg
        return pack_lanes([(self.w_code, c.weight_bits), (self.w_pos, c.pos_bits)])

    def zero_words(self) -> np.ndarray:
        return pack_lanes([(self.zeros, self.cfg.weight_bits)])

    def act_words(self) -> np.ndarray:
        beats = self.acts.shape[0]
        raw = np.ascontiguousarray(self.acts).view(np.uint8).reshape(beats, -1)
        return _bytes_to_words(raw)

    def unpack_results(self, words: np.ndarray) -> torch.Tensor:
        """Result words ``[beats, rows]`` to int32 ``P [tokens, out, groups]``."""
        c = self.cfg
        if words.shape != (self.result_beats, c.rows):
            raise HardwareError(f"the run returned {words.shape[0]} result beats; expected {self.result_beats}")
        p = np.ascontiguousarray(words).view(np.int32).reshape(
            self.token_tiles, self.row_tiles, self.groups, c.cols, c.rows)
        p = p.transpose(0, 3, 1, 4, 2).reshape(self.token_tiles * c.cols, self.row_tiles * c.rows, self.groups)
        return torch.from_numpy(np.ascontiguousarray(p[: self.tokens, : self.out_features]))


def check_fits(t: NMQTensor, cfg: AcceleratorConfig) -> None:
    p = t.pattern
    if p.m > cfg.max_m:
        raise HardwareError(f"pattern {p}: M={p.m} exceeds the array's max M {cfg.max_m}; "
                            f"accepted patterns with M <= {cfg.max_m}, or generate with --max-m {p.m}")
    if t.bits > cfg.weight_bits:
        raise HardwareError(f"weight codes of {t.bits} bits exceed the array's weight width {cfg.weight_bits}; "
                            f"accepted bits <= {cfg.weight_bits}, or generate with --weight-bits {t.bits}")
    windows = t.group // p.m
    if windows >= 1 << WINDOW_BITS:
        raise HardwareError(f"a quantization group of {t.group} weights is {windows} M-groups; "
                            f"the array's window counter holds at most {(1 << WINDOW_BITS) - 1}")


def build_streams(t: NMQTensor, q: torch.Tensor, cfg: AcceleratorConfig) -> Streams:
    """Streams computing ``partial_sums`` of int8 activations ``q [tokens, padded_in]`` with ``t``."""
    check_fits(t, cfg)
    p = t.pattern
    R, C = cfg.rows, cfg.cols
    out, groups = t.out_features, t.groups
    windows = t.group // p.m
    tokens = q.shape[0]
    if q.shape[1] != t.padded_in:
        raise HardwareError(f"activations have {q.shape[1]} columns; the weight expects padded K {t.padded_in}")
    rt, tt = -(-out // R), -(-max(tokens, 1) // C)

    code = np.zeros((rt * R, groups, windows, p.n), np.int16)
    code[:out] = t.codes().numpy().reshape(out, groups, windows, p.n)
    pos = np.zeros((rt * R, groups, windows, p.n), np.int16)
    pos[:out] = t.group_positions().numpy().reshape(out, groups, windows, p.n)
    zero = np.zeros((rt * R, groups), np.int16)
    zero[:out] = t.zero_codes().numpy()

    def weight_order(a: np.ndarray) -> np.ndarray:
        # [rt*R, G, W, N] -> steps [tt, rt, G, W, N, R]
        a = a.reshape(rt, R, groups, windows, p.n).transpose(0, 2, 3, 4, 1)
        return np.broadcast_to(a, (tt,) + a.shape).reshape(-1, R)

    z = zero.reshape(rt, R, groups).transpose(0, 2, 1)
    z = np.broadcast_to(z, (tt,) + z.shape).reshape(-1, R)

    qa = np.zeros((tt * C, t.padded_in), np.int8)
    qa[:tokens] = q.numpy()
    a = qa.reshape(tt, C, groups, windows, p.m).transpose(0, 2, 3, 1, 4)
    a = np.pad(a, [(0, 0)] * 4 + [(0, cfg.max_m - p.m)])
    reuse = rt > 1 and 0 < groups * windows <= cfg.act_buffer_depth
    if reuse:
        a = a.reshape(-1, C, cfg.max_m)
    else:
        a = np.broadcast_to(a[:, None], (tt, rt) + a.shape[1:]).reshape(-1, C, cfg.max_m)

    return Streams(cfg, p.n, p.m, windows, groups, rt, tt, out, tokens,
                   weight_order(code), weight_order(pos), np.ascontiguousarray(z), np.ascontiguousarray(a), reuse)


def pack_lanes(fields: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Pack per-lane fields ``[(values [beats, lanes], width), ...]`` into uint32 words ``[beats, words]``.

    Lane i holds the fields in order from its low bit; lane i + 1 follows
    lane i. That is the ``Cat`` order of the RTL ports.
    """
    beats = np.asarray(fields[0][0]).shape[0]
    chunks = []
    # In chunks, so a LLaMA-sized layer's bit planes never all sit in memory at once.
    for lo in range(0, max(beats, 1), 1 << 16):
        bits = []
        for values, width in fields:
            v = np.asarray(values[lo:lo + (1 << 16)]).astype(np.int32)
            bits.append(((v[..., None] >> np.arange(width, dtype=np.int32)) & 1).astype(np.uint8))
        flat = np.concatenate(bits, axis=-1).reshape(len(bits[0]), -1)
        flat = np.pad(flat, [(0, 0), (0, -flat.shape[1] % 32)])
        chunks.append(_bytes_to_words(np.packbits(flat, axis=-1, bitorder="little")))
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def _bytes_to_words(raw: np.ndarray) -> np.ndarray:
    pad = -raw.shape[1] % 4
    if pad:
        raw = np.pad(raw, [(0, 0), (0, pad)])
    return np.ascontiguousarray(raw).view("<u4")
