"""The timing wrapper: a chip-level top that implements a bare generated accelerator on an FPGA.

A generated design has hundreds of port bits (an 8 x 8 array, max M 8, has
more than 800), more than a CABGA381 package has pins, and nextpnr's
``--out-of-context`` mode, which would leave them unplaced, also drops the
global clock network, so its Fmax would not be that of a real chip. The
wrapper keeps the accelerator whole and puts it on three pins:

* ``clk`` and ``rst`` come from pins, so the clock is promoted to a global
  net as it would be in any real system; ``rst`` passes two flip-flops
  first, so the reset fan-out is timed as a clock-to-clock path.
* every input port bit is driven by its own flip-flop of a free-running
  cyclic rule-150 cellular automaton (``s[i] <= s[i-1] ^ s[i] ^ s[i+1]``).
  No two of those flops, and no accelerator register fed straight from a
  port, share a D input, so Yosys can neither merge the accelerator's
  input registers with each other or with the wrapper's, nor fold them
  into constants; a plain shift register would hand every input register
  a twin (``s[i+1]``) to be merged with.
* every output port bit is folded through a pipelined XOR tree (four bits
  per LUT4, a register after each level) into the one ``out`` pin, so no
  output logic is trimmed and the tree adds no path longer than one LUT.

The accelerator is instantiated by name (``Instance("nmq_accel", ...)``) and
its Verilog is read from the design directory, so what is placed and routed
is exactly the file ``nmq hw generate`` wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from amaranth import (
    Cat,
    ClockDomain,
    ClockSignal,
    Elaboratable,
    Instance,
    Module,
    ResetSignal,
    Signal,
)

from ..config import HardwareError
from ..rtl.generate import TOP

WRAPPER_TOP = "nmq_timing_top"
WRAPPER_VERILOG = f"{WRAPPER_TOP}.v"
# The seed of the automaton: any pattern with ones in it keeps it toggling.
SEED_WORD = 0x9E3779B97F4A7C15
XOR_FAN_IN = 4      # one ECP5 LUT4 per XOR of a level


@dataclass(frozen=True)
class Port:
    name: str
    direction: str   # "input" or "output"
    width: int


_PORT = re.compile(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?(?:\[(\d+):(\d+)\]\s*)?"
                   r"(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)\s*;", re.MULTILINE)


def top_ports(verilog: str | Path, top: str = TOP) -> list[Port]:
    """The ports of module ``top`` as declared in the Verilog file (Yosys' writer: one declaration a line)."""
    text = Path(verilog).read_text()
    start = re.search(rf"^module\s+{re.escape(top)}\s*\(", text, re.MULTILINE)
    if start is None:
        raise HardwareError(f"{verilog}: no module {top!r}; accepted Verilog written by 'nmq hw generate'")
    end = text.find("endmodule", start.end())
    body = text[start.end(): end if end >= 0 else len(text)]
    ports = [Port(name.lstrip("\\"), d, abs(int(hi) - int(lo)) + 1 if hi else 1)
             for d, hi, lo, name in _PORT.findall(body)]
    if not ports or any(p.direction == "inout" for p in ports):
        raise HardwareError(f"{verilog}: module {top!r} has no input/output ports or an inout one; "
                            "accepted Verilog written by 'nmq hw generate'")
    return ports


def xor_tree_registers(bits: int) -> int:
    """Flip-flops of the pipelined XOR tree that folds ``bits`` into one."""
    total = 0
    while bits > 1:
        bits = -(-bits // XOR_FAN_IN)
        total += bits
    return total if total else 1


class TimingWrapper(Elaboratable):
    """An Amaranth Elaboratable around the generated top; ``ports`` are its pins: clk, rst, out.

    ``driven_bits`` (automaton flops), ``folded_bits`` (outputs into the XOR
    tree) and :attr:`ffs` describe what the wrapper itself adds, so readers
    can subtract it from a utilization report.
    """

    def __init__(self, ports: list[Port], top: str = TOP):
        self.top = top
        self.inputs = [p for p in ports if p.direction == "input" and p.name not in ("clk", "rst")]
        self.outputs = [p for p in ports if p.direction == "output"]
        names = {p.name for p in ports}
        if "clk" not in names:
            raise HardwareError(f"module {top!r} has no clk port; accepted a design written by 'nmq hw generate'")
        self.has_rst = "rst" in names
        self.driven_bits = sum(p.width for p in self.inputs)
        self.folded_bits = sum(p.width for p in self.outputs)
        self.clk = Signal()
        self.rst = Signal()
        self.out = Signal()

    @property
    def ffs(self) -> int:
        """Flip-flops the wrapper adds: reset synchronizer, automaton, XOR tree."""
        return 2 + max(self.driven_bits, 3) + xor_tree_registers(self.folded_bits)

    @property
    def ports(self) -> list:
        return [self.clk, self.rst, self.out]

    def elaborate(self, platform):
        m = Module()
        m.domains.raw = ClockDomain("raw", reset_less=True)
        m.domains.sync = ClockDomain("sync")
        sync_rst = Signal(2, init=0b11)
        m.d.comb += [ClockSignal("raw").eq(self.clk), ClockSignal("sync").eq(self.clk),
                     ResetSignal("sync").eq(sync_rst[1])]
        m.d.raw += sync_rst.eq(Cat(self.rst, sync_rst[0]))

        n = max(self.driven_bits, 3)
        seed = sum(((SEED_WORD >> (i % 64)) & 1) << i for i in range(n)) or 1
        state = Signal(n, init=seed)
        m.d.sync += state.eq(Cat(*(state[i - 1] ^ state[i] ^ state[(i + 1) % n] for i in range(n))))

        kwargs = {"i_clk": ClockSignal("sync")}
        if self.has_rst:
            kwargs["i_rst"] = ResetSignal("sync")
        lo = 0
        for p in self.inputs:
            kwargs[f"i_{p.name}"] = state[lo: lo + p.width]
            lo += p.width
        outs = []
        for p in self.outputs:
            sig = Signal(p.width, name=f"acc_{p.name}")
            kwargs[f"o_{p.name}"] = sig
            outs.append(sig)
        m.submodules.accel = Instance(self.top, **kwargs)

        level = Cat(*outs) if outs else Signal(1)
        while True:
            width = -(-len(level) // XOR_FAN_IN)
            folded = Signal(width)
            m.d.sync += folded.eq(Cat(*(level[i: i + XOR_FAN_IN].xor() for i in range(0, len(level), XOR_FAN_IN))))
            level = folded
            if width == 1:
                break
        m.d.comb += self.out.eq(level)
        return m


def write_wrapper(verilog: str | Path, out_dir: str | Path, top: str = TOP) -> tuple[Path, TimingWrapper]:
    """Write ``OUT/nmq_timing_top.v`` around module ``top`` of ``verilog``; returns its path and the wrapper."""
    from amaranth.back import verilog as back

    wrapper = TimingWrapper(top_ports(verilog, top), top)
    path = Path(out_dir) / WRAPPER_VERILOG
    path.write_text(back.convert(wrapper, name=WRAPPER_TOP, ports=wrapper.ports, emit_src=False))
    return path, wrapper
