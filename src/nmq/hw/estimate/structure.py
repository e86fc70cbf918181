"""The generated array's registers and delay lines, counted from its structure (``rtl/top.py``, ``rtl/array.py``).

Both resource estimates start here: the UltraScale+ one (``explore``)
removes the delay lines Yosys packs into SRLs, the ECP5 one (``ecp5``) keeps
them as flip-flops.
"""

from __future__ import annotations

import math

from ..config import AcceleratorConfig


def structural_ffs(cfg: AcceleratorConfig) -> int:
    """Flip-flops of the generated RTL, counted register by register."""
    R, C, wb, pb, mb = cfg.rows, cfg.cols, cfg.weight_bits, cfg.pos_bits, cfg.m_bits
    win = cfg.max_m * cfg.act_bits
    ab, acc = cfg.act_bits, cfg.acc_bits
    # acc, shadow, chain; the step towards the right neighbour (stage 1 too);
    # the window towards the PE below; stage 1's activation, stage 2's product,
    # the stages' flags and ``done``.
    pe = 3 * acc + (wb + 1) + pb + 2 + win + ab + (wb + 1 + ab) + 3
    skew = R * (R - 1) // 2 * (wb + 1 + pb + 2) + C * (C - 1) // 2 * win
    results = R * (R - 1) // 2 * (acc + 1) + R * (C + 1).bit_length()
    issue = R * (wb + 1 + pb) + 2 + C * (win + 1) + R    # + each column's window enable, each row's array enable
    held = R * wb                                    # the zero points of the group
    cb = (C + 1).bit_length()
    # n_last, m, s; win_last, win; groups, g_left, pushed; pad_left, gcount;
    # beat; in_pad, issued_all, adv; the cycle counter; busy, done, error.
    control = (3 * mb + 2 * 16 + 3 * 32 + 2 * cb + max(0, (C - 1).bit_length()) + 3
               + cfg.counter_bits + 3)
    fifo = cfg.result_beat_bits + 3 * max(1, math.ceil(math.log2(cfg.result_fifo_depth + 1)))
    return R * C * pe + skew + results + issue + held + control + fifo


def delay_lines(cfg: AcceleratorConfig) -> list[tuple[int, int]]:
    """``(length, bits)`` of the untapped, reset-less delay lines: row skew, column skew, result de-skew."""
    R, C = cfg.rows, cfg.cols
    lines = [(r, cfg.wval_bits + cfg.pos_bits) for r in range(R)]
    lines += [(c, cfg.max_m * cfg.act_bits) for c in range(C)]
    lines += [(R - 1 - r, cfg.acc_bits) for r in range(R)]
    return [(n, b) for n, b in lines if n > 0]
