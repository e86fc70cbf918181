"""The accelerator top level: stream interfaces, the step controller, the result FIFO.

Ports (:func:`~.layouts.accelerator`): four ``amaranth.lib.stream`` streams,
valid/ready (AXI-Stream style: a beat moves on a cycle where valid and ready
are both high; ready may depend on valid), and a control interface:

* ``w`` weights, one beat per step (:func:`~.layouts.weight_beat`): per row,
  the kept weight's ``code`` (``weight_bits``, low) and its ``pos`` in the
  M-group (``pos_bits``, high).
* ``z`` zero points, one beat per quantization group: the code's zero point
  per row (``2**(bits-1)`` for symmetric weights).
* ``a`` activations, one beat per M-group: for each column (token) c,
  ``max_m`` int8 lanes; lanes at and above the runtime M are ignored.
* ``r`` results, one beat per (group, column): the int32 partial sum of
  every row for that token and quantization group.
* ``ctl``: the runtime registers ``regs`` (:func:`~.layouts.registers`:
  ``n``, ``m``, the N:M pattern, any 1 <= N <= M <= max_m, N == M dense;
  ``windows``, M-groups per quantization group; ``groups``, quantization
  groups to run, all tiles back to back) are latched on ``start``; ``busy``,
  ``done``, ``error`` and ``cycles`` (busy cycles of the last run) report.

Activation reuse (only when generated with ``act_buffer_depth`` > 0):
``regs.row_tiles`` consecutive passes use the same activations and
``regs.pass_windows`` is the number of M-groups in a pass. The first pass of
each such run of passes takes its activations from ``a`` and writes them
into the buffer; the others read them back, so ``a`` carries each token
tile's activations once instead of once per row tile. ``row_tiles`` <= 1
streams every pass.

Schedule, per quantization group: ``windows * n`` steps, each consuming one
weight beat (plus an activation beat on the first step of an M-group and a
zero beat on the first step of the group), then ``max(0, cols - windows * n)``
bubble steps so the result chain can empty. The run ends when every result
beat has left through ``r``.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory

from ..config import GROUP_BITS, WINDOW_BITS, AcceleratorConfig
from .array import SystolicArray
from .layouts import accelerator, zero_beat


class Accelerator(wiring.Component):
    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__(accelerator(cfg))

    def elaborate(self, platform):
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        ab = cfg.act_bits
        w, z, a, ctl = self.w, self.z, self.a, self.ctl
        regs = ctl.regs
        m = Module()

        m.submodules.array = array = SystolicArray(cfg)
        # adv: the array (and the issue register feeding it) moves this cycle. A
        # register, decided a cycle ahead from the FIFO's level alone, so the
        # enable starts at a flip-flop and never waits for the input valids (an
        # empty input sends a bubble). Copies of it, each one flip-flop with the
        # same input: ``adv`` for the issue registers, one per array row
        # (``keep``: synthesis would merge them back), so that no single net
        # reaches every register of the array.
        adv = Signal(init=1, attrs={"keep": 1})
        adv_rows = [Signal(init=1, name=f"adv_r{r}", attrs={"keep": 1}) for r in range(R)]
        m.d.comb += array.en.eq(Cat(*adv_rows))
        # The controller's own copy, so no fan-out of the enable sits on the
        # controller's paths (measured on ECP5: 2.6 ns of routing before the
        # first LUT). Its reset value differs so that synthesis cannot merge it
        # with the others; the controller is idle in the one cycle after reset
        # where they differ, and the array has no result to push in it.
        adv_ctl = Signal(init=0)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=cfg.result_beat_bits, depth=cfg.result_fifo_depth)

        # Runtime registers, latched on start.
        # Bounds are latched as "last index" so the per-step compares need no
        # subtractor, and nothing multiplies: on ECP5 the ``windows * n`` and
        # ``groups * cols`` products took a multiplier block each and were
        # the slowest paths of the controller.
        n_last = Signal(unsigned(cfg.m_bits))
        mm = Signal(unsigned(cfg.m_bits))
        win_last = Signal(unsigned(WINDOW_BITS))
        groups = Signal(unsigned(GROUP_BITS))

        # Schedule state.
        g_left = Signal(unsigned(GROUP_BITS))
        win = Signal(unsigned(WINDOW_BITS))
        s = Signal(unsigned(cfg.m_bits))
        s_zero = Signal(init=1)               # s == 0, kept as a flip-flop
        s_zero_next = Signal()
        # adv_ctl & s_zero one flip-flop per column; ``keep`` so that synthesis
        # does not merge the copies back into one (they share their input).
        win_ce = [Signal(name=f"win_ce_{c}", attrs={"keep": 1}) for c in range(C)]
        # s == 0 and win == 0, a flip-flop too: it selects the zero points of
        # every row at the issue stage, a fan-out that grows with the rows
        # (a 16-row array's slowest path went through the compares).
        g_first = Signal(init=1)
        in_pad = Signal()
        pad_left = Signal(range(C + 1))
        issued_all = Signal()
        gcount = Signal(range(C + 1))        # steps issued in this group, saturating at C
        beat = Signal(range(C))               # result beats pushed of the current group
        pushed = Signal(unsigned(GROUP_BITS))  # groups whose C result beats are all pushed
        zero_reg = Signal(unsigned(cfg.zero_beat_bits), reset_less=True)

        # Activation reuse: which pass of a run of passes sharing activations
        # this is, and which M-window of the pass comes next.
        reuse = Signal()
        tiles_last = Signal(unsigned(WINDOW_BITS))
        pass_last = Signal(unsigned(GROUP_BITS))
        pass_idx = Signal(unsigned(WINDOW_BITS))
        addr = Signal(unsigned(GROUP_BITS))
        from_buffer = Signal()
        m.d.comb += from_buffer.eq(reuse & (pass_idx != 0))

        need_w = Signal()
        need_a = Signal()
        need_z = Signal()
        need_a_port = Signal()
        m.d.comb += [
            need_w.eq(ctl.busy & ~issued_all & ~in_pad),
            need_a.eq(need_w & s_zero),
            need_a_port.eq(need_a & ~from_buffer),
            need_z.eq(need_w & g_first),
        ]
        # take: a step is issued this cycle (its weight, and where due its
        # activation and zero beats, are consumed).
        take = Signal()
        m.d.comb += [
            take.eq(adv_ctl & need_w & w.valid & (~need_a_port | a.valid) & (~need_z | z.valid)),
            w.ready.eq(take),
            a.ready.eq(take & need_a_port),
            z.ready.eq(take & need_z),
        ]

        fresh = Signal(unsigned(cfg.act_beat_bits))      # the window a new M-group starts with
        if cfg.act_buffer_depth:
            m.submodules.act_buffer = mem = Memory(shape=unsigned(cfg.act_beat_bits),
                                                   depth=cfg.act_buffer_depth, init=[])
            wp = mem.write_port()
            # Transparent: a pass of one window reads back the window written on the same edge.
            rp = mem.read_port(domain="sync", transparent_for=(wp,))
            last_window = addr == pass_last
            next_addr = Mux(last_window, 0, addr + 1)
            # The read port is registered: each enabled cycle fetches the window
            # the *next* M-group start will use, so it is ready on time even at N = 1.
            m.d.comb += [
                wp.addr.eq(addr), wp.data.eq(a.payload), wp.en.eq(take & need_a_port & reuse),
                rp.addr.eq(Mux(need_a, next_addr, addr)), rp.en.eq(take),
                fresh.eq(Mux(from_buffer, rp.data, a.payload)),
            ]
            with m.If(take & need_a):
                m.d.sync += addr.eq(next_addr)
                with m.If(last_window):
                    m.d.sync += pass_idx.eq(Mux(pass_idx == tiles_last, 0, pass_idx + 1))
        else:
            m.d.comb += fresh.eq(a.payload)

        # The step issued this cycle: code - zero per row, the (masked) window, flags.
        zeros = zero_beat(cfg)(Mux(need_z, z.payload, zero_reg))
        vals, bad_pos = [], []
        for r in range(R):
            val = Signal(signed(cfg.wval_bits), name=f"wval_{r}")
            m.d.comb += val.eq(w.payload[r].code - zeros[r])
            vals.append(val)
            bad_pos.append(w.payload[r].pos >= mm)
        lane_keep = Cat(*[(Const(i, cfg.m_bits) < mm).replicate(ab) for i in range(cfg.max_m)])
        window = fresh & lane_keep.replicate(C)
        last_step = need_w & (s == n_last) & (win == win_last)

        # Issue register between the ports and the array (keeps port logic off the MAC path).
        i_val = Signal.like(array.w.val, reset_less=True)
        i_pos = Signal.like(array.w.pos, reset_less=True)
        i_win = Signal.like(array.a_win, reset_less=True)
        i_valid = Signal()
        i_last = Signal()
        m.d.comb += [array.w.val.eq(i_val), array.w.pos.eq(i_pos), array.a_win.eq(i_win),
                     array.w.valid.eq(i_valid), array.w.last.eq(i_last)]
        # The data of a bubble is never read (its valid is low), so the wide
        # registers load on every advance and only the flags look at ``take``.
        with m.If(adv):
            m.d.sync += [
                i_val.eq(Cat(*vals)),
                i_pos.eq(Cat(*(w.payload[r].pos for r in range(R)))),
                i_valid.eq(take),
                i_last.eq(take & last_step),
            ]
            # Loaded while the step that needs them waits, and once more when it
            # is taken: ``need_z``/``need_a`` stay high until then.
            with m.If(need_z):
                m.d.sync += zero_reg.eq(z.payload)
            with m.If(array.r.valid):
                with m.If(beat == C - 1):
                    m.d.sync += [beat.eq(0), pushed.eq(pushed + 1)]
                with m.Else():
                    m.d.sync += beat.eq(beat + 1)
        # The window register is the issue register of the activations: loaded
        # at an M-group's first step, held (a clock enable, no multiplexer over
        # the C x max_m x 8 bits) for the group's other N - 1 steps. Its enable,
        # adv_ctl & s_zero, is decided a cycle ahead into one flip-flop per
        # column, each driving that column's max_m x 8 bits: on ECP5 the single
        # net over all C x max_m x 8 bits was the 16 x 8 array's slowest path
        # (10.6 of its 11.4 ns routing). Loading while idle or padding is
        # harmless: only valid steps read it.
        lanes = cfg.max_m * ab
        for c in range(C):
            with m.If(win_ce[c]):
                m.d.sync += i_win.as_value()[c * lanes:(c + 1) * lanes].eq(window[c * lanes:(c + 1) * lanes])
        # A position >= M raises the (sticky) error a cycle later, off the take path.
        bad_step = Signal()
        m.d.sync += bad_step.eq(take & Cat(*bad_pos).any())
        with m.If(bad_step):
            m.d.sync += ctl.error.eq(1)

        pad = Signal(range(C + 1))
        m.d.comb += pad.eq(Mux(gcount < C - 1, C - 1 - gcount, 0))
        with m.If(adv_ctl & ctl.busy & in_pad):
            m.d.sync += pad_left.eq(pad_left - 1)
            with m.If(pad_left == 1):
                m.d.sync += in_pad.eq(0)
                with m.If(g_left == 0):
                    m.d.sync += issued_all.eq(1)
        with m.Elif(take):
            m.d.sync += [gcount.eq(Mux(last_step, 0, Mux(gcount == C, C, gcount + 1))), g_first.eq(last_step)]
            with m.If(s == n_last):
                m.d.sync += [s.eq(0), s_zero.eq(1)]
                with m.If(win == win_last):
                    m.d.sync += [win.eq(0), g_left.eq(g_left - 1)]
                    with m.If(pad != 0):
                        m.d.sync += [in_pad.eq(1), pad_left.eq(pad)]
                    with m.Elif(g_left == 1):
                        m.d.sync += issued_all.eq(1)
                with m.Else():
                    m.d.sync += win.eq(win + 1)
            with m.Else():
                m.d.sync += [s.eq(s + 1), s_zero.eq(0)]

        # The array cannot wait, so it runs in two cycles only if the FIFO will
        # still have room for a beat then, whatever this cycle and the next
        # push: two entries for those, and one of margin, as the buffered
        # FIFO's inner store can be full for a cycle while its output register
        # is empty. Two cycles ahead because the decision goes through one
        # flip-flop (``room_q``) before its copies: the compare's output then
        # drives one flip-flop, and the copies, spread over the array, load
        # from a flip-flop (on ECP5 the compare feeding every copy directly was
        # a 4 x 8 array's slowest path, 7.1 of its 9.6 ns routing).
        push = Signal()
        m.d.comb += [push.eq(adv_ctl & array.r.valid),
                     fifo.w_data.eq(array.r.payload), fifo.w_en.eq(push)]
        room_q = Signal(init=1)
        m.d.sync += room_q.eq(fifo.level + push <= cfg.result_fifo_depth - 3)
        m.d.sync += [adv.eq(room_q), adv_ctl.eq(room_q), *(a.eq(room_q) for a in adv_rows)]
        # s_zero's next value, as the schedule below sets it (start, or a taken step).
        m.d.comb += s_zero_next.eq(Mux(~ctl.busy & ctl.start, 1, Mux(take, s == n_last, s_zero)))
        m.d.sync += [ce.eq(room_q & s_zero_next) for ce in win_ce]
        wiring.connect(m, fifo.r_stream, wiring.flipped(self.r))

        with m.If(ctl.busy):
            m.d.sync += ctl.cycles.eq(ctl.cycles + 1)
            with m.If(issued_all & (pushed == groups) & (fifo.level == 0)):
                m.d.sync += [ctl.busy.eq(0), ctl.done.eq(1)]
        with m.Elif(ctl.start):
            use_buffer = (regs.row_tiles > 1) if cfg.act_buffer_depth else Const(0, 1)
            cfg_ok = ((regs.n != 0) & (regs.n <= regs.m) & (regs.m <= cfg.max_m)
                      & (regs.windows != 0) & (regs.groups != 0)
                      & (~use_buffer | ((regs.pass_windows != 0)
                                        & (regs.pass_windows <= cfg.act_buffer_depth))))
            m.d.sync += [
                n_last.eq(regs.n - 1), mm.eq(regs.m), win_last.eq(regs.windows - 1), groups.eq(regs.groups),
                g_left.eq(regs.groups), win.eq(0), s.eq(0), s_zero.eq(1), g_first.eq(1), in_pad.eq(0), pad_left.eq(0), gcount.eq(0),
                issued_all.eq(0), beat.eq(0), pushed.eq(0), ctl.cycles.eq(0),
                reuse.eq(use_buffer), tiles_last.eq(regs.row_tiles - 1), pass_last.eq(regs.pass_windows - 1),
                pass_idx.eq(0), addr.eq(0),
                ctl.busy.eq(cfg_ok), ctl.done.eq(~cfg_ok), ctl.error.eq(~cfg_ok),
            ]
        return m
