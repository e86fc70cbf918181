"""simulate_board: the board top's self-check, bit-exact in Verilator.

The model is the simulation top ``sim/nmq_board_sim.v`` (the same BoardTop
as on the board, with a UART a few cycles per bit and ports for the verdict)
plus the design's ``nmq_accel.v`` and ``board_main.cpp`` (package data next
to this module). It is built once per board directory, cached in
``OUT/verilator/`` under a hash of its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from ..config import HardwareError
from ..rtl.generate import LINT_WAIVERS
from ..sim.harness import verilator_reason
from .build import SIM_TOP, BoardBuild
from .uart import program

MAIN = "board_main.cpp"
# Yosys writes an Amaranth FSM (and an Array index) as a case over the used
# codes only; the unused codes keep every signal as it is, which is intended.
WAIVERS = (*LINT_WAIVERS, "-Wno-CASEINCOMPLETE")
LINE = re.compile(r"nmq (PASS|FAIL) (\d+)/(\d+)(?: mismatches=(\d+) beats=(\d+) errors=(\d+))? cycles=(\d+)\r\n")


def main_source() -> str:
    return resources.files(__package__).joinpath(MAIN).read_text()


def _sources(build: BoardBuild) -> list[Path]:
    return [Path(build.files["sim_verilog"]), Path(build.files["accel_verilog"])]


def build_model(build: BoardBuild, jobs: int = 2, opt: str = "-O1") -> tuple[Path, float]:
    """The model's executable and the seconds its build took (0 when cached)."""
    reason = verilator_reason()
    if reason:
        raise HardwareError(f"cannot simulate the board with Verilator: {reason}")
    sources = _sources(build)
    for p in sources:
        if not p.is_file():
            raise HardwareError(f"{p}: missing; accepted a directory written by write_board")
    h = hashlib.sha256()
    for part in [p.read_bytes() for p in sources] + [main_source().encode(), opt.encode(), " ".join(WAIVERS).encode()]:
        h.update(hashlib.sha256(part).digest())
    root = Path(build.files["record"]).parent / "verilator"
    exe = root / h.hexdigest()[:16] / "Vboard"
    if exe.is_file():
        return exe, 0.0
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    (tmp / MAIN).write_text(main_source())
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), "-fno-merge-cond", *WAIVERS,
           "--output-split", "20000", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
           "--top-module", SIM_TOP, "--prefix", "Vboard", "-Mdir", str(tmp), "-o", "Vboard",
           "-CFLAGS", f"{opt} -std=c++17", *[str(p.resolve()) for p in sources], str(tmp / MAIN)]
    env = dict(os.environ, OPT_FAST=opt, OPT_SLOW="-O0", OPT_GLOBAL="-O1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HardwareError(f"Verilator build of the board failed: {(proc.stderr or proc.stdout)[-600:]}")
    try:
        tmp.rename(exe.parent)
    except OSError:
        # Another process finished the same build first; theirs is as good.
        shutil.rmtree(tmp, ignore_errors=True)
        if not exe.is_file():
            raise
    return exe, seconds


def simulate_board(build: BoardBuild, max_cycles: int | None = None) -> dict:
    """Run the board's self-check: ``pass``, ``mismatches``, ``beats``, ``cycles``, ``uart`` (the line) and more.

    ``cycles`` is the accelerator's own cycle counter; ``model_cycles`` the
    cycle model's figure for the same run. The UART line and the debug ports
    are cross-checked: a line that does not say what the ports say is an error.
    """
    exe, build_seconds = build_model(build)
    if max_cycles is None:
        # The watchdog ends every run; then one line of UART text, with room to spare.
        line_chars = len(program(["nmq FAIL ", f"/{build.beats} mismatches= beats= errors= cycles=\r\n"])) + 60
        max_cycles = build.timeout_cycles + 64 + 2 * line_chars * 10 * build.sim_divisor
    cmd = [str(exe), "--divisor", str(build.sim_divisor), "--max-cycles", str(max_cycles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HardwareError(f"the board simulation failed: {proc.stderr.strip()[-400:]}")
    r = json.loads(proc.stdout)
    if not r["line_done"]:
        raise HardwareError(f"the board printed no report line within {max_cycles} cycles (got {r['uart']!r})")
    match = LINE.fullmatch(r["uart"])
    if match is None or r["framing_error"]:
        raise HardwareError(f"the board's UART line {r['uart']!r} is malformed")
    verdict, matched, total, mm, beats, errors, cycles = match.groups()
    said = {"pass": verdict == "PASS", "cycles": int(cycles), "beats": int(total if beats is None else beats),
            "mismatches": int(mm or 0), "errors": int(errors or 0)}
    ports = {"pass": bool(r["passed"]), "cycles": r["cycles"], "beats": r["beats"], "mismatches": r["mismatches"],
             "errors": r["errors"]}
    if said != ports or int(matched) != ports["beats"] - ports["mismatches"] or int(total) != build.beats:
        raise HardwareError(f"the board's UART line {r['uart']!r} disagrees with its ports {ports}")
    return {**ports, "uart": r["uart"], "expected_beats": build.beats, "model_cycles": build.expected_cycles,
            "finished_at": r["finished_at"], "sim_cycles": r["sim_cycles"], "leds": r["leds"],
            "sim_seconds": r["sim_seconds"], "build_seconds": build_seconds}
