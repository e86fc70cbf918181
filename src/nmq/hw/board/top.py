"""BoardTop: the accelerator, ROMs of one layer and a self-check, for a real board or for Verilator.

The accelerator is the generated module ``nmq_accel`` (an ``Instance``; its
Verilog is read beside this top), so the board runs exactly the file ``nmq
hw generate`` wrote. After a power-on reset of the accelerator the sequencer
pulses ``start`` with the constant register struct, streams the weight,
zero and activation ROMs into ``w``, ``z``, ``a``, always accepts ``r`` and
compares every result beat with the expected ROM. The run ends on the
accelerator's ``done`` or on a watchdog. PASS needs every beat to match,
the exact number of beats, every operand beat consumed, no error flag and no
timeout; the verdict goes to the LEDs and to a UART line, repeated.

LEDs: 0 PASS, 1 FAIL, 2 finished, 3 heartbeat (the clock runs), 4 running,
5 watchdog timeout, 6 accelerator error, 7 UART activity.

Each ROM's synchronous read port is addressed with the *next* index when a
beat moves, so its output always holds the beat at the current index and a
stream's payload is valid on every cycle: beats move back to back.
"""

from __future__ import annotations

from amaranth import (
    Cat,
    ClockSignal,
    Const,
    Instance,
    Module,
    Mux,
    Shape,
    Signal,
    unsigned,
)
from amaranth.lib import io, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import HardwareError
from ..rtl.generate import TOP as ACCEL_TOP
from ..rtl.layouts import accelerator
from .layer import BoardImage
from .uart import LinePrinter

# Cycles the accelerator is held in reset after configuration (or the sim's reset).
RESET_CYCLES = 16
COUNT_BITS = 32
# Error bits printed on a FAIL line.
ERR_ACCEL, ERR_TIMEOUT, ERR_STREAMS, ERR_COUNT = 1, 2, 4, 8


def lines(image: BoardImage) -> list[list[str | int]]:
    """The PASS and FAIL lines; an int prints a counter: 0 matched, 1 mismatches, 2 beats, 3 cycles, 4 errors."""
    e = len(image.expected)
    return [["nmq PASS ", f"{e}/{e}", " cycles=", 3, "\r\n"],
            ["nmq FAIL ", 0, f"/{e} mismatches=", 1, " beats=", 2, " errors=", 4, " cycles=", 3, "\r\n"]]


class BoardTop(wiring.Component):
    """The self-checking board design of one :class:`~.layer.BoardImage`.

    ``divisor``: clock cycles per UART bit; ``repeat_cycles``: cycles between
    repeated report lines (0: print once); ``heartbeat_cycles``: half period
    of LED 3; ``timeout_cycles``: the watchdog. Under a platform the LEDs and
    the UART transmit pin are requested; without one (simulation) the
    verdict and counters are ports.
    """

    def __init__(self, image: BoardImage, divisor: int, repeat_cycles: int = 0, heartbeat_cycles: int = 1 << 20,
                 timeout_cycles: int | None = None):
        cfg = image.cfg
        self.image = image
        self.divisor = divisor
        self.repeat_cycles = repeat_cycles
        self.heartbeat_cycles = max(1, heartbeat_cycles)
        # Generous: the watchdog only turns a hang into a visible FAIL.
        self.timeout_cycles = timeout_cycles or 8 * image.model_cycles + 4096
        if self.timeout_cycles >= 1 << COUNT_BITS:
            raise HardwareError(f"board watchdog of {self.timeout_cycles} cycles does not fit {COUNT_BITS} bits; "
                                "accepted a smaller layer slice")
        super().__init__({
            "tx": Out(1),
            "leds": Out(8),
            "finished": Out(1),
            "passed": Out(1),
            "mismatches": Out(COUNT_BITS),
            "beats": Out(COUNT_BITS),
            "cycles": Out(cfg.counter_bits),
            "errors": Out(4),
        })

    def elaborate(self, platform):
        image, cfg = self.image, self.image.cfg
        m = Module()

        # The accelerator, port for port as generate.py names them.
        port: dict[str, Signal] = {}
        conns = {"i_clk": ClockSignal("sync")}
        for path, member in accelerator(cfg).members.flatten():
            if not member.is_port:
                continue
            name = "_".join(map(str, path))
            port[name] = Signal(Shape.cast(member.shape).width, name=f"accel_{name}")
            conns[("i_" if member.flow == In else "o_") + name] = port[name]
        por = Signal(range(RESET_CYCLES + 1))
        accel_rst = Signal()
        m.d.comb += accel_rst.eq(por != RESET_CYCLES)
        with m.If(accel_rst):
            m.d.sync += por.eq(por + 1)
        conns["i_rst"] = accel_rst
        m.submodules.accel = Instance(ACCEL_TOP, **conns)
        m.d.comb += port["ctl_regs"].eq(Const(image.regs, len(port["ctl_regs"])))

        running = Signal()
        consumed = []
        for name, beats in (("w", image.weights), ("z", image.zeros), ("a", image.acts)):
            consumed.append(self._feed(m, name, beats, port, running))

        # Results: always accepted, compared with the expected ROM.
        m.d.comb += port["r_ready"].eq(1)
        expected = image.expected
        rom = Memory(shape=unsigned(cfg.result_beat_bits), depth=len(expected), init=expected)
        m.submodules.expected_rom = rom
        rp = rom.read_port()
        beats, mismatches = self.beats, self.mismatches
        m.d.comb += rp.addr.eq(Mux(port["r_valid"], beats + 1, beats))
        with m.If(port["r_valid"]):
            m.d.sync += beats.eq(beats + 1)
            with m.If((beats < len(expected)) & (port["r_payload"] != rp.data)):
                m.d.sync += mismatches.eq(mismatches + 1)

        timer = Signal(COUNT_BITS)
        timeout, accel_error = Signal(), Signal()
        with m.FSM():
            with m.State("reset"), m.If(~accel_rst):
                m.next = "start"
            with m.State("start"):
                m.d.comb += port["ctl_start"].eq(1)
                m.next = "run"
            with m.State("run"):
                m.d.comb += running.eq(1)
                m.d.sync += timer.eq(timer + 1)
                with m.If(port["ctl_done"]):
                    m.d.sync += [self.cycles.eq(port["ctl_cycles"]), accel_error.eq(port["ctl_error"]),
                                 self.finished.eq(1)]
                    m.next = "report"
                with m.Elif(timer == self.timeout_cycles):
                    m.d.sync += [self.cycles.eq(port["ctl_cycles"]), timeout.eq(1), self.finished.eq(1)]
                    m.next = "report"
            with m.State("report"):
                pass            # the verdict holds until the next configuration

        m.d.comb += self.errors.eq(Mux(accel_error, ERR_ACCEL, 0) | Mux(timeout, ERR_TIMEOUT, 0)
                                   | Mux(~Cat(*consumed).all(), ERR_STREAMS, 0)
                                   | Mux(beats != len(expected), ERR_COUNT, 0))
        m.d.comb += self.passed.eq(self.finished & (mismatches == 0) & (self.errors == 0))

        printer = LinePrinter(lines(image), [(beats - mismatches)[:COUNT_BITS], mismatches, beats, self.cycles, self.errors],
                              self.divisor)
        m.submodules.printer = printer
        m.d.comb += [self.tx.eq(printer.tx), printer.select.eq(~self.passed)]
        # The first line goes out as soon as the run ends; with repeat_cycles a new one follows every period.
        wait = Signal(COUNT_BITS)
        sent = Signal()
        again = (~sent | (wait == 0)) if self.repeat_cycles else ~sent
        with m.If(self.finished & ~printer.busy & ~printer.go):
            with m.If(again):
                m.d.sync += [printer.go.eq(1), sent.eq(1), wait.eq(self.repeat_cycles)]
            with m.Elif(wait != 0):
                m.d.sync += wait.eq(wait - 1)
        with m.Else():
            m.d.sync += printer.go.eq(0)

        beat = Signal(range(self.heartbeat_cycles))
        blink = Signal()
        m.d.sync += beat.eq(Mux(beat == self.heartbeat_cycles - 1, 0, beat + 1))
        with m.If(beat == self.heartbeat_cycles - 1):
            m.d.sync += blink.eq(~blink)
        m.d.comb += self.leds.eq(Cat(self.passed, self.finished & ~self.passed, self.finished, blink, running,
                                      timeout, accel_error, ~self.tx))

        if platform is not None:
            pins = [(f"led{i}", platform.request("led", i, dir="-"), self.leds[i]) for i in range(8)]
            pins.append(("uart_tx", platform.request("uart", 0, dir="-").tx, self.tx))
            for name, pin, value in pins:
                m.submodules[name] = buf = io.Buffer("o", pin)
                m.d.comb += buf.o.eq(value)
        return m

    def _feed(self, m: Module, name: str, beats: list[int], port: dict[str, Signal], running: Signal) -> Signal:
        """Stream a ROM into the accelerator's ``name`` port; returns "every beat was consumed"."""
        rom = Memory(shape=unsigned(len(port[f"{name}_payload"])), depth=len(beats), init=beats)
        m.submodules[f"{name}_rom"] = rom
        rp = rom.read_port()
        idx = Signal(range(len(beats) + 1), name=f"{name}_index")
        valid, ready = port[f"{name}_valid"], port[f"{name}_ready"]
        fire = valid & ready
        # valid must not depend on ready (the accelerator's ready may depend on valid).
        m.d.comb += [valid.eq(running & (idx < len(beats))), port[f"{name}_payload"].eq(rp.data),
                     rp.addr.eq(Mux(fire, idx + 1, idx))]
        with m.If(fire):
            m.d.sync += idx.eq(idx + 1)
        done = Signal(name=f"{name}_consumed")
        m.d.comb += done.eq(idx == len(beats))
        return done

