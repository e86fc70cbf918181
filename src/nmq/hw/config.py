"""AcceleratorConfig: the elaboration parameters of the generated array (DESIGN.md section 5).

Everything here is fixed when the Verilog is generated. The sparsity pattern
(N, M), the quantization group length and the number of groups are *runtime*
registers of the generated design, so one bitstream serves every N:M pattern
with M up to ``max_m``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import NMQError

# Widths of the window and group counters, so of their runtime registers.
WINDOW_BITS = 16
GROUP_BITS = 32


class HardwareError(NMQError, ValueError):
    """An accelerator configuration, tool or hardware run that cannot be used."""


@dataclass(frozen=True)
class AcceleratorConfig:
    """Array geometry, datapath widths, buffers and the platform assumptions of the cycle model."""

    rows: int = 16               # output channels computed at once (weight rows)
    cols: int = 16               # tokens computed at once
    max_m: int = 8               # largest M the activation window multiplexer supports
    weight_bits: int = 4         # widest weight code the datapath takes (4 or 8); narrower codes also run
    act_bits: int = 8            # int8 activations (DESIGN.md section 3)
    acc_bits: int = 32           # exact int32 partial sums
    result_fifo_depth: int = 8   # result beats buffered before the array stalls
    counter_bits: int = 48       # cycle counter width
    act_buffer_depth: int = 0    # M-windows of on-chip activation buffer (0: none, re-stream per row tile)
    clock_mhz: float = 300.0     # assumed clock for time and throughput estimates
    bandwidth_gbs: float = 19.2  # assumed off-chip bandwidth (GB/s) for the bandwidth bound

    def __post_init__(self) -> None:
        def bad(field: str, value, accepted: str) -> None:
            raise HardwareError(f"accelerator config: {field}={value!r} is out of range; accepted {accepted}")

        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 256:
                bad(name, v, "an integer 1..256")
        if not isinstance(self.max_m, int) or not 1 <= self.max_m <= 16:
            bad("max_m", self.max_m, "an integer 1..16")
        if self.weight_bits not in (2, 3, 4, 8):
            bad("weight_bits", self.weight_bits, "2, 3, 4 or 8")
        if self.act_bits != 8:
            bad("act_bits", self.act_bits, "8 (activations are int8, DESIGN.md section 3)")
        if self.acc_bits != 32:
            bad("acc_bits", self.acc_bits, "32 (partial sums are exact int32, DESIGN.md section 3)")
        # The array's enable is decided two cycles ahead with one entry of margin (rtl/top.py).
        if not isinstance(self.result_fifo_depth, int) or not 4 <= self.result_fifo_depth <= 4096:
            bad("result_fifo_depth", self.result_fifo_depth, "an integer 4..4096")
        if not isinstance(self.counter_bits, int) or not 16 <= self.counter_bits <= 64:
            bad("counter_bits", self.counter_bits, "an integer 16..64")
        if not isinstance(self.act_buffer_depth, int) or not 0 <= self.act_buffer_depth <= 1 << 20:
            bad("act_buffer_depth", self.act_buffer_depth, "an integer 0..1048576 (0: no activation buffer)")
        if not self.clock_mhz > 0:
            bad("clock_mhz", self.clock_mhz, "a positive number")
        if not self.bandwidth_gbs > 0:
            bad("bandwidth_gbs", self.bandwidth_gbs, "a positive number")

    # -- derived widths --------------------------------------------------------

    @property
    def pos_bits(self) -> int:
        """Width of a kept weight's position inside its M-group."""
        return max(1, math.ceil(math.log2(self.max_m)))

    @property
    def m_bits(self) -> int:
        """Width of the runtime N and M registers (they hold 1..max_m)."""
        return max(1, self.max_m.bit_length())

    @property
    def register_fields(self) -> dict[str, int]:
        """The runtime registers and their widths, low bit first: the layout of the ``ctl_regs`` port.

        Plain widths here rather than an Amaranth layout, so the host packs the
        registers (``sim/streams.py``) without Amaranth installed.
        """
        return {"n": self.m_bits, "m": self.m_bits, "windows": WINDOW_BITS, "groups": GROUP_BITS,
                "row_tiles": WINDOW_BITS, "pass_windows": GROUP_BITS}

    @property
    def wval_bits(self) -> int:
        """Signed width of ``code - zero``: one bit more than the code."""
        return self.weight_bits + 1

    @property
    def weight_lane_bits(self) -> int:
        """One row's share of a weight beat: code (low bits) then position."""
        return self.weight_bits + self.pos_bits

    @property
    def weight_beat_bits(self) -> int:
        return self.rows * self.weight_lane_bits

    @property
    def zero_beat_bits(self) -> int:
        return self.rows * self.weight_bits

    @property
    def act_beat_bits(self) -> int:
        return self.cols * self.max_m * self.act_bits

    @property
    def result_beat_bits(self) -> int:
        return self.rows * self.acc_bits

    @property
    def act_buffer_bits(self) -> int:
        """Bits of the activation buffer (one activation beat per M-window)."""
        return self.act_buffer_depth * self.act_beat_bits

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def name(self) -> str:
        buf = f"b{self.act_buffer_depth}" if self.act_buffer_depth else ""
        return f"nmq_array_r{self.rows}c{self.cols}m{self.max_m}w{self.weight_bits}{buf}"

    # -- persistence -------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> AcceleratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HardwareError(f"accelerator config: unknown field(s) {unknown}; accepted {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> AcceleratorConfig:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        return cls.from_dict(read_json(p, "no accelerator config; accepted a directory written by 'nmq hw generate'"))


def read_json(path: Path, missing: str):
    """The JSON in ``path``; a missing or malformed file is one HardwareError line (``missing`` says what was expected)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HardwareError(f"{path}: {missing}") from None
    except json.JSONDecodeError as exc:
        raise HardwareError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
