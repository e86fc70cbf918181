"""The shapes of the accelerator's interfaces, as Amaranth data layouts and signatures.

Every layout packs lane 0 (row 0, column 0, the first field) into the lowest
bits, so the host's word images (``sim/streams.py``) are plain little-endian
concatenations of the lanes.
"""

from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig


def weight_lane(cfg: AcceleratorConfig) -> data.StructLayout:
    """One row's share of a weight beat: the kept weight's code and its position in the M-group."""
    return data.StructLayout({"code": unsigned(cfg.weight_bits), "pos": unsigned(cfg.pos_bits)})


def weight_beat(cfg: AcceleratorConfig) -> data.ArrayLayout:
    return data.ArrayLayout(weight_lane(cfg), cfg.rows)


def zero_beat(cfg: AcceleratorConfig) -> data.ArrayLayout:
    return data.ArrayLayout(unsigned(cfg.weight_bits), cfg.rows)


def act_window(cfg: AcceleratorConfig) -> data.ArrayLayout:
    """The ``max_m`` int8 activations of one M-group of one token."""
    return data.ArrayLayout(signed(cfg.act_bits), cfg.max_m)


def act_beat(cfg: AcceleratorConfig) -> data.ArrayLayout:
    return data.ArrayLayout(act_window(cfg), cfg.cols)


def result_beat(cfg: AcceleratorConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(cfg.acc_bits), cfg.rows)


def registers(cfg: AcceleratorConfig) -> data.StructLayout:
    return data.StructLayout({name: unsigned(width) for name, width in cfg.register_fields.items()})


def control(cfg: AcceleratorConfig) -> wiring.Signature:
    """The host's side of the control interface: it writes ``regs`` and pulses ``start``."""
    return wiring.Signature({
        "regs": Out(registers(cfg)),
        "start": Out(1),
        "busy": In(1),
        "done": In(1),
        "error": In(1),
        "cycles": In(unsigned(cfg.counter_bits)),
    })


def accelerator(cfg: AcceleratorConfig) -> wiring.Signature:
    """The top level's ports: three operand streams in, the result stream out, the control interface."""
    return wiring.Signature({
        "w": In(stream.Signature(weight_beat(cfg))),
        "z": In(stream.Signature(zero_beat(cfg))),
        "a": In(stream.Signature(act_beat(cfg))),
        "r": Out(stream.Signature(result_beat(cfg))),
        "ctl": In(control(cfg)),
    })


def pe_step(cfg: AcceleratorConfig) -> data.StructLayout:
    """One step as a PE sees it: ``code - zero``, the position, and the step's flags."""
    return data.StructLayout({"val": signed(cfg.wval_bits), "pos": unsigned(cfg.pos_bits), "valid": 1, "last": 1})


def array_step(cfg: AcceleratorConfig) -> data.StructLayout:
    """One step for the whole array: a value and a position per row, one pair of flags for all rows."""
    return data.StructLayout({
        "val": data.ArrayLayout(signed(cfg.wval_bits), cfg.rows),
        "pos": data.ArrayLayout(unsigned(cfg.pos_bits), cfg.rows),
        "valid": 1,
        "last": 1,
    })
