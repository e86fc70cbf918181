"""The accelerator top level: stream interfaces, the step controller, the result FIFO.

Ports (all valid/ready streams, AXI-Stream style: a beat moves on a cycle
where valid and ready are both high; ready may depend on valid):

* ``w_*`` weights, one beat per step: for each row r, lane r holds the
  kept weight's code (``weight_bits``, low) and its position in the M-group
  (``pos_bits``, high).
* ``z_*`` zero points, one beat per quantization group: the code's zero
  point per row (``2**(bits-1)`` for symmetric weights).
* ``a_*`` activations, one beat per M-group: for each column (token) c,
  ``max_m`` int8 lanes; lanes at and above the runtime M are ignored.
* ``r_*`` results, one beat per (group, column): the int32 partial sum of
  every row for that token and quantization group.

Control/status: the runtime registers ``cfg_n``, ``cfg_m`` (the N:M
pattern, any 1 <= N <= M <= max_m; N == M is dense), ``cfg_windows``
(M-groups per quantization group) and ``cfg_groups`` (quantization groups to
run, all tiles back to back) are latched on ``start``; ``busy``, ``done``,
``error`` and ``cycles`` (busy cycles of the last run) report.

Activation reuse (only when generated with ``act_buffer_depth`` > 0):
``cfg_row_tiles`` consecutive passes use the same activations and
``cfg_pass_windows`` is the number of M-groups in a pass. The first pass of
each such run of passes takes its activations from ``a_*`` and writes them
into the buffer; the others read them back, so ``a_*`` carries each token
tile's activations once instead of once per row tile. ``cfg_row_tiles`` <= 1
streams every pass.

Schedule, per quantization group: ``cfg_windows * cfg_n`` steps, each
consuming one weight beat (plus an activation beat on the first step of an
M-group and a zero beat on the first step of the group), then
``max(0, cols - cfg_windows * cfg_n)`` bubble steps so the result chain can
empty. The run ends when every result beat has left through ``r_*``.
"""

from __future__ import annotations

from amaranth import Cat, Const, EnableInserter, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .array import SystolicArray

WINDOW_BITS = 16
GROUP_BITS = 32


class Accelerator(wiring.Component):
    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__({
            "w_data": In(unsigned(cfg.weight_beat_bits)),
            "w_valid": In(1),
            "w_ready": Out(1),
            "z_data": In(unsigned(cfg.zero_beat_bits)),
            "z_valid": In(1),
            "z_ready": Out(1),
            "a_data": In(unsigned(cfg.act_beat_bits)),
            "a_valid": In(1),
            "a_ready": Out(1),
            "r_data": Out(unsigned(cfg.result_beat_bits)),
            "r_valid": Out(1),
            "r_ready": In(1),
            "cfg_n": In(unsigned(cfg.m_bits)),
            "cfg_m": In(unsigned(cfg.m_bits)),
            "cfg_windows": In(unsigned(WINDOW_BITS)),
            "cfg_groups": In(unsigned(GROUP_BITS)),
            "cfg_row_tiles": In(unsigned(WINDOW_BITS)),
            "cfg_pass_windows": In(unsigned(GROUP_BITS)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "cycles": Out(unsigned(cfg.counter_bits)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        wb, pb, ab = cfg.weight_bits, cfg.pos_bits, cfg.act_bits
        lane = cfg.weight_lane_bits
        m = Module()

        array = SystolicArray(cfg)
        en = Signal()
        m.submodules.array = EnableInserter(en)(array)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=cfg.result_beat_bits, depth=cfg.result_fifo_depth)

        # Runtime registers, latched on start.
        n = Signal(unsigned(cfg.m_bits))
        mm = Signal(unsigned(cfg.m_bits))
        windows = Signal(unsigned(WINDOW_BITS))
        gsteps = Signal(unsigned(WINDOW_BITS + cfg.m_bits))
        expected = Signal(unsigned(GROUP_BITS + 9))

        # Schedule state.
        g_left = Signal(unsigned(GROUP_BITS))
        win = Signal(unsigned(WINDOW_BITS))
        s = Signal(unsigned(cfg.m_bits))
        in_pad = Signal()
        pad_left = Signal(range(C + 1))
        issued_all = Signal()
        pushed = Signal(unsigned(GROUP_BITS + 9))
        zero_reg = Signal(unsigned(cfg.zero_beat_bits), reset_less=True)
        win_reg = Signal(unsigned(cfg.act_beat_bits), reset_less=True)

        # Activation reuse: which pass of a run of passes sharing activations
        # this is, and which M-window of the pass comes next.
        reuse = Signal()
        row_tiles = Signal(unsigned(WINDOW_BITS))
        pass_windows = Signal(unsigned(GROUP_BITS))
        pass_idx = Signal(unsigned(WINDOW_BITS))
        addr = Signal(unsigned(GROUP_BITS))
        from_buffer = Signal()
        m.d.comb += from_buffer.eq(reuse & (pass_idx != 0))

        need_w = Signal()
        need_a = Signal()
        need_z = Signal()
        need_a_port = Signal()
        m.d.comb += [
            need_w.eq(self.busy & ~issued_all & ~in_pad),
            need_a.eq(need_w & (s == 0)),
            need_a_port.eq(need_a & ~from_buffer),
            need_z.eq(need_a & (win == 0)),
        ]
        inputs_ok = ~need_w | (self.w_valid & (~need_a_port | self.a_valid) & (~need_z | self.z_valid))
        m.d.comb += [
            en.eq(self.busy & inputs_ok & fifo.w_rdy),
            self.w_ready.eq(en & need_w),
            self.a_ready.eq(en & need_a_port),
            self.z_ready.eq(en & need_z),
        ]

        fresh = Signal(unsigned(cfg.act_beat_bits))      # the window a new M-group starts with
        if cfg.act_buffer_depth:
            m.submodules.act_buffer = mem = Memory(shape=unsigned(cfg.act_beat_bits),
                                                   depth=cfg.act_buffer_depth, init=[])
            wp = mem.write_port()
            # Transparent: a pass of one window reads back the window written on the same edge.
            rp = mem.read_port(domain="sync", transparent_for=(wp,))
            last_window = addr == pass_windows - 1
            next_addr = Mux(last_window, 0, addr + 1)
            # The read port is registered: each enabled cycle fetches the window
            # the *next* M-group start will use, so it is ready on time even at N = 1.
            m.d.comb += [
                wp.addr.eq(addr), wp.data.eq(self.a_data), wp.en.eq(en & need_a_port & reuse),
                rp.addr.eq(Mux(need_a, next_addr, addr)), rp.en.eq(en),
                fresh.eq(Mux(from_buffer, rp.data, self.a_data)),
            ]
            with m.If(en & need_a):
                m.d.sync += addr.eq(next_addr)
                with m.If(last_window):
                    m.d.sync += pass_idx.eq(Mux(pass_idx == row_tiles - 1, 0, pass_idx + 1))
        else:
            m.d.comb += fresh.eq(self.a_data)

        # The step issued this cycle: code - zero per row, the (masked) window, flags.
        zeros = Mux(need_z, self.z_data, zero_reg)
        vals, poss, bad_pos = [], [], []
        for r in range(R):
            code = self.w_data[r * lane:r * lane + wb]
            pos = self.w_data[r * lane + wb:(r + 1) * lane]
            val = Signal(signed(cfg.wval_bits), name=f"wval_{r}")
            m.d.comb += val.eq(code - zeros[r * wb:(r + 1) * wb])
            vals.append(val)
            poss.append(pos)
            bad_pos.append(pos >= mm)
        window_in = Mux(need_a, fresh, win_reg)
        lane_keep = Cat(*[(Const(i, cfg.m_bits) < mm).replicate(ab) for i in range(cfg.max_m)])
        window = window_in & lane_keep.replicate(C)
        last_step = need_w & (s == n - 1) & (win == windows - 1)

        # Issue register between the ports and the array (keeps port logic off the MAC path).
        i_val = Signal.like(array.w_val, reset_less=True)
        i_pos = Signal.like(array.w_pos, reset_less=True)
        i_win = Signal.like(array.a_win, reset_less=True)
        i_valid = Signal()
        i_last = Signal()
        m.d.comb += [array.w_val.eq(i_val), array.w_pos.eq(i_pos), array.a_win.eq(i_win),
                     array.w_valid.eq(i_valid), array.w_last.eq(i_last)]
        with m.If(en):
            m.d.sync += [
                i_val.eq(Cat(*vals)),
                i_pos.eq(Cat(*poss)),
                i_valid.eq(need_w),
                i_last.eq(last_step),
                i_win.eq(window),
            ]
            with m.If(need_z):
                m.d.sync += zero_reg.eq(self.z_data)
            with m.If(need_a):
                m.d.sync += win_reg.eq(fresh)
            with m.If(need_w & Cat(*bad_pos).any()):
                m.d.sync += self.error.eq(1)

            pad = Signal(range(C + 1))
            m.d.comb += pad.eq(Mux(gsteps < C, C - gsteps, 0))
            with m.If(in_pad):
                m.d.sync += pad_left.eq(pad_left - 1)
                with m.If(pad_left == 1):
                    m.d.sync += in_pad.eq(0)
                    with m.If(g_left == 0):
                        m.d.sync += issued_all.eq(1)
            with m.Elif(need_w):
                with m.If(s == n - 1):
                    m.d.sync += s.eq(0)
                    with m.If(win == windows - 1):
                        m.d.sync += [win.eq(0), g_left.eq(g_left - 1)]
                        with m.If(pad != 0):
                            m.d.sync += [in_pad.eq(1), pad_left.eq(pad)]
                        with m.Elif(g_left == 1):
                            m.d.sync += issued_all.eq(1)
                    with m.Else():
                        m.d.sync += win.eq(win + 1)
                with m.Else():
                    m.d.sync += s.eq(s + 1)
            with m.If(array.r_valid):
                m.d.sync += pushed.eq(pushed + 1)

        m.d.comb += [
            fifo.w_data.eq(array.r_data),
            fifo.w_en.eq(en & array.r_valid),
            self.r_data.eq(fifo.r_data),
            self.r_valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.r_ready),
        ]

        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(issued_all & (pushed == expected) & (fifo.level == 0)):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.start):
            use_buffer = (self.cfg_row_tiles > 1) if cfg.act_buffer_depth else Const(0, 1)
            cfg_ok = ((self.cfg_n != 0) & (self.cfg_n <= self.cfg_m) & (self.cfg_m <= cfg.max_m)
                      & (self.cfg_windows != 0) & (self.cfg_groups != 0)
                      & (~use_buffer | ((self.cfg_pass_windows != 0)
                                        & (self.cfg_pass_windows <= cfg.act_buffer_depth))))
            m.d.sync += [
                n.eq(self.cfg_n), mm.eq(self.cfg_m), windows.eq(self.cfg_windows),
                gsteps.eq(self.cfg_windows * self.cfg_n),
                expected.eq(self.cfg_groups * C),
                g_left.eq(self.cfg_groups), win.eq(0), s.eq(0), in_pad.eq(0), pad_left.eq(0),
                issued_all.eq(0), pushed.eq(0), self.cycles.eq(0),
                reuse.eq(use_buffer), row_tiles.eq(self.cfg_row_tiles), pass_windows.eq(self.cfg_pass_windows),
                pass_idx.eq(0), addr.eq(0),
                self.busy.eq(cfg_ok), self.done.eq(~cfg_ok), self.error.eq(~cfg_ok),
            ]
        return m
