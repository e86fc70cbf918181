"""Energy per token of the accelerator, an estimate; and the CPU's measured energy where the machine exposes it.

    energy = off-chip bytes x pJ/byte + MACs x pJ/MAC + on-chip bytes x pJ/byte + static power x time

The counts are the cycle model's (``cycle_model.layer_cycles``: compressed
weight, activation and result bytes over the off-chip interface, MACs
issued, padding included) plus the on-chip traffic of the same tiling: the
activation buffer written once per token tile and read back by every other
row tile, and every result beat written into and read out of the result
FIFO. Time is the cycle model's at the design's clock, so a measured clock
(``clocks.clock_for``) changes the static share.

Per-operation figures are Horowitz's 45 nm ones (ISSCC 2014) scaled by the
FPGA-over-ASIC dynamic power gap Kuon and Rose measured (14x, 90 nm); the
off-chip figure depends on the board's memory; the static power is the
device's. ``CONSTANTS`` holds every number with its source; docs/hardware.md
("Energy") discusses them. Everything here is an estimate, not a
measurement, and is labelled so in every output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from ..config import AcceleratorConfig
from .cycle_model import layer_cycles, model_layers

HOROWITZ = "Horowitz, \"Computing's energy problem (and what we can do about it)\", ISSCC 2014, 45 nm, 0.9 V"
KUON_ROSE = ("Kuon and Rose, \"Measuring the gap between FPGAs and ASICs\", IEEE TCAD 26(2), 2007, 90 nm: "
             "FPGA dynamic power ~14x the ASIC's, less with hard blocks")
CONSTANTS = {
    "int8_mult_pj": {"value": 0.2, "unit": "pJ", "source": f"{HOROWITZ}: 8-bit integer multiply"},
    "int32_add_pj": {"value": 0.1, "unit": "pJ", "source": f"{HOROWITZ}: 32-bit integer add"},
    "sram_read_64b_pj": {"value": 10.0, "unit": "pJ", "source": f"{HOROWITZ}: 64-bit access of an 8 KB SRAM"},
    "dram_64b_pj": {"value": 1950.0, "unit": "pJ",
                    "source": f"{HOROWITZ}: DRAM, 1.3-2.6 nJ per 64-bit access (midpoint)"},
    "lpddr4_pj_per_bit": {"value": 14.0, "unit": "pJ/bit",
                          "source": "LPDDR4 13-14 pJ/bit, DramDSE simulations of 32 Gb LPDDR4 (H. Ha, Stanford "
                                    "PhD thesis), as collected in github.com/Dongyunkam/DRAM_info; used for DDR4 "
                                    "too (no DDR4-specific figure found)"},
    "fpga_over_asic": {"value": 14.0, "unit": "x", "source": KUON_ROSE},
    "zynq_static_w_per_lut": {"value": 0.85 / (522720 - 47232), "unit": "W/LUT",
                              "source": "Xilinx, Power Optimization Guide for Zynq UltraScale+ MPSoC: XCZU19EG "
                                        "(522,720 LUTs) draws 850 mW more static power than XCZU2EG (47,232), "
                                        "static power proportional to capacity; per LUT, no intercept (a floor)"},
    "ecp5_85f_static_w": {"value": 0.1, "unit": "W",
                          "source": "assumed: no Lattice figure found to cite; the ECP5 data sheet's standby "
                                    "supply currents and Lattice's Power Calculator give it per design"},
}
ECP5_85F_LUTS = 83640


def _c(name: str) -> float:
    return CONSTANTS[name]["value"]


def mac_pj() -> float:
    """One 9 x 8-bit multiply and one 32-bit accumulate, on FPGA fabric."""
    return (_c("int8_mult_pj") + _c("int32_add_pj")) * _c("fpga_over_asic")


def onchip_pj_per_byte() -> float:
    return _c("sram_read_64b_pj") / 8 * _c("fpga_over_asic")


def platform(budget: dict) -> dict:
    """Off-chip pJ/byte and static W of a budget (board, ECP5 device or custom), with the source of each."""
    if budget.get("family") == "ecp5":
        return {"offchip_pj_per_byte": _c("dram_64b_pj") / 8,
                "static_w": _c("ecp5_85f_static_w") * budget["lut"] / ECP5_85F_LUTS,
                "offchip_source": "SDR SDRAM: " + CONSTANTS["dram_64b_pj"]["source"],
                "static_source": CONSTANTS["ecp5_85f_static_w"]["source"] + "; scaled by LUTs from the 85F"}
    # Custom budgets count UltraScale+ cells, so they take the UltraScale+ figures too.
    return {"offchip_pj_per_byte": _c("lpddr4_pj_per_bit") * 8,
            "static_w": _c("zynq_static_w_per_lut") * budget["lut"],
            "offchip_source": "DDR4/LPDDR4: " + CONSTANTS["lpddr4_pj_per_bit"]["source"],
            "static_source": CONSTANTS["zynq_static_w_per_lut"]["source"]}


def onchip_bytes(cfg: AcceleratorConfig, out: int, padded_in: int, tokens: int, m: int, group: int) -> int:
    """Bytes written to and read from on-chip memories by one layer (activation buffer, result FIFO)."""
    row_tiles = -(-out // cfg.rows)
    token_tiles = -(-max(tokens, 1) // cfg.cols)
    windows = padded_in // m
    total = 0
    if row_tiles > 1 and windows <= cfg.act_buffer_depth:
        beat = cfg.act_beat_bits // 8
        total += token_tiles * windows * beat * row_tiles      # one write, then a read per other row tile
    beats = row_tiles * token_tiles * cfg.cols * (padded_in // group)
    total += 2 * beats * cfg.rows * cfg.acc_bits // 8
    return total


def token_energy(cfg: AcceleratorConfig, plat: dict, model: str = "llama-7b", pattern: tuple[int, int] = (2, 4),
                 bits: int = 4, group: int = 128, tokens: int = 1) -> dict:
    """Joules per token of one forward step through every compressed layer, split by where they go."""
    n, m = pattern
    offchip = macs = onchip = cycles = 0
    for _, out, k, count in model_layers(model):
        g = k if group == -1 else group
        kp = -(-k // g) * g
        e = layer_cycles(cfg, out, kp, tokens, n, m, g, bits)
        offchip += (e.weight_bytes + e.act_bytes + e.result_bytes) * count
        macs += e.macs * count
        onchip += onchip_bytes(cfg, out, kp, tokens, m, g) * count
        cycles += e.cycles * count
    seconds = cycles / (cfg.clock_mhz * 1e6)
    parts = {
        "offchip": offchip * plat["offchip_pj_per_byte"] * 1e-12,
        "mac": macs * mac_pj() * 1e-12,
        "onchip": onchip * onchip_pj_per_byte() * 1e-12,
        "static": plat["static_w"] * seconds,
    }
    t = max(tokens, 1)
    return {"pattern": f"{n}:{m}", "tokens": t, "seconds_per_step": seconds, "clock_mhz": cfg.clock_mhz,
            "offchip_bytes": offchip, "macs": macs, "onchip_bytes": onchip,
            "joules": {k: v / t for k, v in parts.items()}, "joules_per_token": sum(parts.values()) / t,
            "estimate": True}


def constants_used(plat: dict) -> dict:
    """The figures an energy estimate rests on, each with its source."""
    gap = f"x {_c('fpga_over_asic'):g} ({KUON_ROSE})"
    return {"mac_pj": {"value": round(mac_pj(), 3),
                       "source": f"({_c('int8_mult_pj'):g} pJ 8-bit multiply + {_c('int32_add_pj'):g} pJ 32-bit add, "
                                 f"{HOROWITZ}) {gap}"},
            "onchip_pj_per_byte": {"value": round(onchip_pj_per_byte(), 3),
                                   "source": f"{_c('sram_read_64b_pj'):g} pJ per 64-bit access of an 8 KB SRAM "
                                             f"({HOROWITZ}) / 8 bytes {gap}"},
            "offchip_pj_per_byte": {"value": round(plat["offchip_pj_per_byte"], 2), "source": plat["offchip_source"]},
            "static_w": {"value": round(plat["static_w"], 4), "source": plat["static_source"]}}


# -- the CPU, measured ------------------------------------------------------------

POWERCAP = Path("/sys/class/powercap")


def rapl_counters(root: Path = POWERCAP) -> list[Path] | str:
    """The package-level RAPL ``energy_uj`` files, or why there are none."""
    if not root.is_dir():
        return f"{root} does not exist (this machine exposes no RAPL energy counters)"
    # intel-rapl:N are packages; intel-rapl:N:M are their sub-domains, already inside the package count.
    files = sorted(p / "energy_uj" for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not files:
        return f"{root} has no intel-rapl:N package domains"
    for f in files:
        try:
            int(f.read_text())
        except OSError as exc:
            return f"{f}: {exc.strerror or exc} (reading RAPL counters usually needs root)"
        except ValueError:
            return f"{f}: not a counter"
    return files


def cpu_energy(run: Callable[[], int], root: Path = POWERCAP) -> dict:
    """Joules per token of ``run`` (which decodes and returns how many tokens) from RAPL, package domains only.

    When the counters are missing or unreadable, ``run`` is not called and
    the result is ``{"joules_per_token": None, "status": "unavailable: <why>"}``.
    The figure covers the whole package (every core, idle or not) over the run.
    """
    files = rapl_counters(root)
    if isinstance(files, str):
        return {"joules_per_token": None, "status": f"unavailable: {files}"}

    def read() -> list[int]:
        return [int(f.read_text()) for f in files]

    ranges = []
    for f in files:
        try:
            ranges.append(int((f.parent / "max_energy_range_uj").read_text()))
        except (OSError, ValueError):
            ranges.append(0)
    before, t0 = read(), time.perf_counter()
    tokens = run()
    after, seconds = read(), time.perf_counter() - t0
    # A counter that wrapped during the run restarts from zero at max_energy_range_uj.
    uj = sum(a - b if a >= b else a + r - b for a, b, r in zip(after, before, ranges))
    return {"joules_per_token": uj * 1e-6 / max(tokens, 1), "status": "measured: RAPL package energy",
            "tokens": tokens, "seconds": seconds, "domains": [str(f.parent.name) for f in files]}


def format_joules(j: float) -> str:
    if not math.isfinite(j):
        return "-"
    return f"{j:.3f} J" if j >= 1 else f"{j * 1e3:.1f} mJ"
