"""The processing element: one zero-skipping multiply-accumulate.

A PE receives one kept weight per step as a :func:`~.layouts.pe_step`
(value, position and the step's flags) and the M-window of activations that weight belongs to. The position drives a
multiplexer over the window, so a group of M activations with N kept weights
costs N steps, not M: the pruned zeros are never multiplied.

Output-stationary: the PE accumulates one (token, output row) partial sum
for a whole quantization group; on the group's last weight it moves the
finished sum into ``shadow`` and restarts, so the next group computes while
the row's result chain reads the finished one out.

Three register stages, :data:`PE_STAGES`: the selected activation, the
product, the accumulator. Unpipelined, the position multiplexer, the
multiplier and the 32-bit add made one path (18.6 ns on ECP5, 53.7 MHz for
an 8 x 8 array); each stage now holds one of them. ``done`` rises on the
cycle the finished sum is in ``shadow``, so the row's result chain loads it
without knowing the pipeline's depth.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .layouts import act_window, pe_step

# Cycles from a step entering the PE to its sum being in ``shadow``.
PE_STAGES = 3


class ProcessingElement(wiring.Component):
    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__({
            # weight step, arriving from the left neighbour (or the row skew)
            "w": In(pe_step(cfg)),
            # activation window of the same step, arriving from above
            "a_win": In(act_window(cfg)),
            # result chain: parallel load of every shadow in the row, then shift towards column 0
            "chain_in": In(signed(cfg.acc_bits)),
            "chain_load": In(1),
            "chain_shift": In(1),
            "w_o": Out(pe_step(cfg)),
            "a_win_o": Out(act_window(cfg)),
            "chain_o": Out(signed(cfg.acc_bits)),
            "shadow": Out(signed(cfg.acc_bits)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        ab = cfg.act_bits
        w = self.w
        # Pad the multiplexer to a power of two with zeros so an out-of-range
        # position reads zero instead of an undefined lane.
        lanes = [self.a_win[i] for i in range(cfg.max_m)]
        lanes += [Const(0, signed(ab))] * ((1 << cfg.pos_bits) - cfg.max_m)
        # Data registers need no reset: nothing reads them before a valid
        # step or a chain load has written them. Only the flags and the
        # accumulator are reset, which keeps reset muxes off the wide paths;
        # hence a register per field rather than one for the whole step.
        # The step's registers towards the right neighbour are stage 1's too.
        val_o = Signal.like(w.val, reset_less=True)
        pos_o = Signal.like(w.pos, reset_less=True)
        valid_o = Signal()
        last_o = Signal()
        win_o = Signal.like(self.a_win, reset_less=True)
        chain = Signal.like(self.chain_o, reset_less=True)
        m.d.sync += [
            val_o.eq(w.val),
            pos_o.eq(w.pos),
            valid_o.eq(w.valid),
            last_o.eq(w.last & w.valid),
            win_o.eq(self.a_win),
        ]

        # Stage 1: the kept weight's activation, chosen by its position.
        act = Signal(signed(ab), reset_less=True)
        m.d.sync += act.eq(Array(lanes)[w.pos])

        # Stage 2: the product.
        prod = Signal(signed(cfg.wval_bits + ab), reset_less=True)
        valid2, last2 = Signal(), Signal()
        m.d.sync += [prod.eq(val_o * act), valid2.eq(valid_o), last2.eq(last_o)]

        # Stage 3: accumulate; int32 wrap-around, as a 32-bit accumulator does
        # (the reference raises before any sum leaves int32, so in range both agree).
        acc = Signal(signed(cfg.acc_bits))
        shadow = Signal(signed(cfg.acc_bits), reset_less=True)
        total = Signal(signed(cfg.acc_bits))
        done = Signal()
        m.d.comb += total.eq(acc + prod)
        m.d.sync += done.eq(valid2 & last2)
        with m.If(valid2):
            with m.If(last2):
                m.d.sync += [shadow.eq(total), acc.eq(0)]
            with m.Else():
                m.d.sync += acc.eq(total)

        m.d.comb += [self.w_o.val.eq(val_o), self.w_o.pos.eq(pos_o), self.w_o.valid.eq(valid_o),
                     self.w_o.last.eq(last_o), self.a_win_o.eq(win_o),
                     self.chain_o.eq(chain), self.shadow.eq(shadow), self.done.eq(done)]
        with m.If(self.chain_load):
            m.d.sync += chain.eq(shadow)
        with m.Elif(self.chain_shift):
            m.d.sync += chain.eq(self.chain_in)
        return m
