"""A UART transmitter (8N1) and a line printer that spells runtime counters in decimal.

The printer runs a small program from a ROM: literal characters and "print
number i" tokens, ending with an end token. Keeping the text in a ROM rather
than in logic lets the board top change its message in Python alone; the
decimal conversion is repeated subtraction of powers of ten, which costs a
few cycles per digit and no divider, and the UART is thousands of times
slower than that anyway.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Elaboratable, Module, Signal, unsigned
from amaranth.lib.memory import Memory

from ..config import HardwareError

# Token kinds, in the two high bits of a 10-bit program word.
CHAR, NUMBER, END = 0, 1, 2


class UartTx(Elaboratable):
    """8N1 transmitter: ``divisor`` clock cycles per bit, idle high; a byte moves when ``valid`` and ``ready``."""

    def __init__(self, divisor: int):
        if not isinstance(divisor, int) or divisor < 2:
            raise HardwareError(f"UART divisor {divisor!r} is out of range; accepted an integer >= 2 (clock cycles per bit)")
        self.divisor = divisor
        self.data = Signal(8)
        self.valid = Signal()
        self.ready = Signal()
        self.tx = Signal()

    def elaborate(self, platform):
        m = Module()
        # tx is bit 0 of the shift register itself, so the pin is driven by a
        # flip-flop (no glitches); ones shift in behind the stop bit, which is idle.
        shift = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        baud = Signal(range(self.divisor))
        m.d.comb += [self.ready.eq(bits_left == 0), self.tx.eq(shift[0])]
        with m.If(~self.ready):
            with m.If(baud == 0):
                m.d.sync += [shift.eq(Cat(shift[1:], Const(1, 1))), bits_left.eq(bits_left - 1),
                             baud.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += baud.eq(baud - 1)
        with m.Elif(self.valid):
            m.d.sync += [shift.eq(Cat(Const(0, 1), self.data, Const(1, 1))), bits_left.eq(10),
                         baud.eq(self.divisor - 1)]
        return m


def program(text: list[str | int]) -> list[int]:
    """Program words of a line: each ``str`` character literally, each ``int`` as that number in decimal."""
    words = []
    for item in text:
        if isinstance(item, int):
            words.append(NUMBER << 8 | item)
        else:
            for ch in item:
                code = ord(ch)
                if code > 0x7F:
                    raise HardwareError(f"UART text {item!r}: {ch!r} is not ASCII; accepted ASCII text")
                words.append(CHAR << 8 | code)
    return words + [END << 8]


class LinePrinter(Elaboratable):
    """Prints one of several lines through a :class:`UartTx` on each ``go`` pulse.

    ``lines`` are :func:`program` inputs; ``numbers`` the unsigned values the
    ``int`` items refer to (by index). ``select`` picks the line; ``busy`` is
    high from ``go`` until the end token.
    """

    def __init__(self, lines: list[list[str | int]], numbers: list[Signal], divisor: int):
        self.numbers = numbers
        self.uart = UartTx(divisor)
        words, self.starts = [], []
        for line in lines:
            self.starts.append(len(words))
            words += program(line)
        self.words = words
        self.width = max([len(v) for v in numbers] + [1])
        self.select = Signal(range(max(len(lines), 2)))
        self.go = Signal()
        self.busy = Signal()
        self.tx = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = uart = self.uart
        m.d.comb += self.tx.eq(uart.tx)
        m.submodules.text = rom = Memory(shape=unsigned(10), depth=len(self.words), init=self.words)
        ptr = Signal(range(len(self.words)))
        rp = rom.read_port(domain="comb")
        m.d.comb += rp.addr.eq(ptr)
        kind, arg = rp.data[8:], rp.data[:8]

        digits = len(str((1 << self.width) - 1))
        powers = Array(Const(10 ** k, self.width) for k in range(digits))
        values = Array(self.numbers)
        val = Signal(self.width)
        place = Signal(range(digits))
        digit = Signal(4)
        started = Signal()
        in_number = Signal()
        char = Signal(8)
        m.d.comb += uart.data.eq(char)

        with m.FSM():
            with m.State("idle"), m.If(self.go):
                m.d.sync += ptr.eq(Array(Const(s, len(ptr)) for s in self.starts)[self.select])
                m.next = "fetch"
            with m.State("fetch"):
                m.d.comb += self.busy.eq(1)
                with m.If(kind == CHAR):
                    m.d.sync += [char.eq(arg), in_number.eq(0)]
                    m.next = "send"
                with m.Elif(kind == NUMBER):
                    m.d.sync += [val.eq(values[arg]), place.eq(digits - 1), digit.eq(0), started.eq(0),
                                 in_number.eq(1)]
                    m.next = "digit"
                with m.Else():
                    m.next = "idle"
            with m.State("send"):
                m.d.comb += [self.busy.eq(1), uart.valid.eq(1)]
                with m.If(uart.ready):
                    with m.If(in_number):
                        m.next = "next_digit"
                    with m.Else():
                        m.d.sync += ptr.eq(ptr + 1)
                        m.next = "fetch"
            with m.State("digit"):
                m.d.comb += self.busy.eq(1)
                with m.If(val >= powers[place]):
                    m.d.sync += [val.eq(val - powers[place]), digit.eq(digit + 1)]
                with m.Elif((digit != 0) | started | (place == 0)):
                    # Leading zeros are skipped; the units digit always prints, so 0 reads "0".
                    m.d.sync += [char.eq(ord("0") + digit), started.eq(1)]
                    m.next = "send"
                with m.Else():
                    m.next = "next_digit"
            with m.State("next_digit"):
                m.d.comb += self.busy.eq(1)
                with m.If(place == 0):
                    m.d.sync += [ptr.eq(ptr + 1), in_number.eq(0)]
                    m.next = "fetch"
                with m.Else():
                    m.d.sync += [place.eq(place - 1), digit.eq(0)]
                    m.next = "digit"
        return m
