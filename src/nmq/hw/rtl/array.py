"""The R x C systolic array with its input skew and output de-skew.

Rows are output channels, columns are tokens. A step (one kept weight per
row, the matching activation window per column) enters at the top-left
corner: row r's weights are delayed r cycles and column c's windows c
cycles, so PE (r, c) sees the weight and the window of the same step at
cycle ``step + r + c``. Every register of row r advances only when ``en[r]``
is high (``EnableInserter`` on its PEs), which is how the whole array stalls
on a full result FIFO without any per-PE handshake. The R enables are copies
of one register of the top level (``rtl/top.py``), one per row so that no
single net reaches every register of the array, and never logic of the input
valids: an empty input only sends a bubble (a step with ``valid`` low) into
the array.

Results: when the row's last PE reports its group ``done``, every PE
of the row has its finished sum in ``shadow``; the row loads them into its
chain and shifts them out towards column 0, one per cycle (column 0 first).
Row r does this r cycles after row 0, so row r's output is delayed by
R - 1 - r cycles to leave as one R-wide beat per column. The chain needs C
cycles per group, so the controller never issues groups shorter than C steps
(it pads with bubbles), see ``rtl/top.py``.
"""

from __future__ import annotations

from amaranth import EnableInserter, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .layouts import act_beat, array_step, result_beat
from .pe import ProcessingElement


class SystolicArray(wiring.Component):
    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__({
            "w": In(array_step(cfg)),
            "a_win": In(act_beat(cfg)),
            # Row r's copy of the array's enable (all R equal, see the module's note).
            "en": In(cfg.rows),
            # No back-pressure: the whole array stalls on its enable instead.
            "r": Out(stream.Signature(result_beat(cfg), always_ready=True)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        m = Module()

        pes = [[ProcessingElement(cfg) for _ in range(C)] for _ in range(R)]
        for r in range(R):
            for c in range(C):
                m.submodules[f"pe_{r}_{c}"] = EnableInserter(self.en[r])(pes[r][c])

        def delayed(sig, n: int, name: str, en, data: bool = True):
            """``sig`` through ``n`` registers enabled by ``en``; data registers are not reset (flags are)."""
            for i in range(n):
                reg = Signal.like(sig, name=f"{name}_d{i}", reset_less=data)
                with m.If(en):
                    m.d.sync += reg.eq(sig)
                sig = reg
            return sig

        # Row skew: weights of row r (with the step's valid/last flags) wait r
        # cycles; field by field, as only the flags' delay registers are reset.
        w = self.w
        for r in range(R):
            head = pes[r][0].w
            m.d.comb += [
                head.val.eq(delayed(w.val[r], r, f"wval_r{r}", self.en[r])),
                head.pos.eq(delayed(w.pos[r], r, f"wpos_r{r}", self.en[r])),
                head.valid.eq(delayed(w.valid, r, f"wvld_r{r}", self.en[r], data=False)),
                head.last.eq(delayed(w.last, r, f"wlst_r{r}", self.en[r], data=False)),
            ]
            for c in range(1, C):
                m.d.comb += pes[r][c].w.eq(pes[r][c - 1].w_o)

        # Column skew: column c's activation windows wait c cycles, then flow down.
        for c in range(C):
            m.d.comb += pes[0][c].a_win.eq(delayed(self.a_win[c], c, f"awin_c{c}", self.en[0]))
            for r in range(1, R):
                m.d.comb += pes[r][c].a_win.eq(pes[r - 1][c].a_win_o)

        # Result chains and de-skew.
        valids = []
        for r in range(R):
            row = pes[r]
            load = Signal(name=f"chain_load_r{r}")
            # The last column finishes a group last; by then every shadow of the row holds its sum.
            m.d.comb += load.eq(row[C - 1].done)
            remaining = Signal(range(C + 1), name=f"chain_left_r{r}")
            with m.If(self.en[r]):
                with m.If(load):
                    m.d.sync += remaining.eq(C)
                with m.Elif(remaining != 0):
                    m.d.sync += remaining.eq(remaining - 1)
            for c in range(C):
                m.d.comb += [row[c].chain_load.eq(load), row[c].chain_shift.eq(1)]
                m.d.comb += row[c].chain_in.eq(row[c + 1].chain_o if c + 1 < C else 0)
            valid = Signal(name=f"chain_valid_r{r}")
            m.d.comb += valid.eq(remaining != 0)
            m.d.comb += self.r.payload[r].eq(delayed(row[0].chain_o, R - 1 - r, f"res_r{r}", self.en[r]))
            valids.append(delayed(valid, R - 1 - r, f"resv_r{r}", self.en[r], data=False))

        m.d.comb += self.r.valid.eq(valids[R - 1])
        return m
