"""Emit the accelerator: Verilog, the config as JSON, a README of the ports.

``nmq hw generate --rows R --cols C --max-m M --weight-bits B -o DIR`` calls
:func:`generate`. The top module is always ``nmq_accel`` so the harness and
the synthesis script never depend on the configuration.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from ..config import AcceleratorConfig, HardwareError

TOP = "nmq_accel"
VERILOG = f"{TOP}.v"
# Yosys' Verilog writer leans on Verilog's context-determined widths (a 32-bit
# add into a 33-bit net, a 1-bit constant compared with a 3-bit register);
# Verilator reports each as WIDTH although the semantics are exact.
LINT_WAIVERS = ("-Wno-WIDTH",)


def verilog_text(cfg: AcceleratorConfig) -> str:
    from amaranth import Value
    from amaranth.back import rtlil, verilog

    from .top import Accelerator

    top = Accelerator(cfg)
    # Amaranth joins a member's path with "__" (``w__payload``), which
    # Verilator's C++ spells ``w___05Fpayload``; one "_" keeps the harness's
    # names those of the ports (``top->w_payload``). Directions are inferred:
    # what the design drives is an output.
    ports = {"_".join(map(str, path)): (Value.cast(value), None)
             for path, _, value in top.signature.flatten(top)}
    text = rtlil.convert(top, name=TOP, ports=ports, emit_src=False)
    # Amaranth's own RTLIL-to-Verilog step (``verilog.convert`` is this call
    # after ``rtlil.convert``), run on the text with its kept registers marked.
    return verilog._convert_rtlil_text(keep_registers(text))


_KEPT_WIRE = re.compile(r"attribute \\keep 1\n\s*wire width \d+ (\S+)\n")
_DFF_CELL = re.compile(r"( *)cell \$dff .*?\n *end\n", re.DOTALL)


def keep_registers(text: str) -> str:
    """RTLIL with ``keep`` on every ``$dff`` that drives a wire marked ``keep`` (``Signal(attrs={"keep": 1})``).

    Amaranth puts a signal's attributes on its wire, but Yosys's ``opt_merge``
    merges flip-flops with the same input unless the *cell* is kept, so the
    copies of a replicated register (one per column, to split a fan-out)
    would collapse back into one. Written to Verilog, the attribute precedes
    the register's ``always`` block, where other flows read it too.
    """
    kept = set(_KEPT_WIRE.findall(text))

    def mark(cell: re.Match) -> str:
        q = re.search(r"connect \\Q (\S+)\n", cell.group(0))
        if q is None or q.group(1) not in kept:
            return cell.group(0)
        return f"{cell.group(1)}attribute \\keep 1\n{cell.group(0)}"

    return _DFF_CELL.sub(mark, text)


def generate(cfg: AcceleratorConfig, out_dir: str | Path, lint: bool = True) -> dict:
    """Write ``DIR/nmq_accel.v``, ``DIR/config.json``, ``DIR/README.md``; lint when Verilator is present."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HardwareError(f"{out}: exists and is not a directory; accepted a new or existing directory")
    out.mkdir(parents=True, exist_ok=True)
    text = verilog_text(cfg)
    (out / VERILOG).write_text(text)
    cfg.save(out / "config.json")
    (out / "README.md").write_text(ports_readme(cfg))
    info = {
        "dir": str(out),
        "verilog": str(out / VERILOG),
        "top": TOP,
        "config": cfg.to_dict(),
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "amaranth_version": metadata.version("amaranth"),
        "lint": None,
    }
    if lint:
        info["lint"] = lint_verilog(out / VERILOG)
    (out / "generated.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def lint_verilog(path: str | Path) -> dict:
    """``verilator --lint-only`` on the emitted Verilog: ``{"clean", "command", "messages"}``, or None without Verilator."""
    exe = shutil.which("verilator")
    if exe is None:
        return {"clean": None, "command": None, "messages": "verilator not installed"}
    cmd = [exe, "--lint-only", *LINT_WAIVERS, "--top-module", TOP, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    messages = (proc.stdout + proc.stderr).strip()
    return {"clean": proc.returncode == 0 and "%Warning" not in messages and "%Error" not in messages,
            "command": " ".join(cmd), "messages": messages[:4000]}


def ports_readme(cfg: AcceleratorConfig) -> str:
    c = cfg
    buf = f", activation buffer of {c.act_buffer_depth} M-windows" if c.act_buffer_depth else ""
    reuse = (f"replayed from the {c.act_buffer_depth}-window activation buffer; <= 1: stream every pass"
             if c.act_buffer_depth else "ignored: this design has no activation buffer")
    fields, lo = [], 0
    for name, width in c.register_fields.items():
        fields.append(f"`{name}` [{lo}, {lo + width})")
        lo += width
    return f"""# {TOP}: N:M zero-skipping systolic array ({c.rows} x {c.cols}, max M {c.max_m}, weights {c.weight_bits} bit{buf})

Generated by `nmq hw generate`; the configuration is in `config.json`, the
architecture in nmq's `docs/hardware.md`. One clock (`clk`, rising edge),
synchronous active-high reset (`rst`).

The ports are the Amaranth interfaces of `nmq.hw.rtl.layouts.accelerator`,
flattened with `_`: the streams `w`, `z`, `a` (in) and `r` (out), each
`X_payload`, `X_valid`, `X_ready` (`amaranth.lib.stream`: a beat moves on a
rising edge where valid and ready are both high; ready may depend on valid,
never the reverse), and the control interface `ctl`. Every payload is a data
layout packed little end first: lane 0 (row 0, column 0, the first field)
in the lowest bits.

| port | dir | width | meaning |
| --- | --- | --- | --- |
| `w_payload` | in | {c.weight_beat_bits} | one step: for row r, bits [{c.weight_lane_bits}r, {c.weight_lane_bits}r+{c.weight_bits}) the kept weight's `code`, the next {c.pos_bits} bits its `pos` in the M-group |
| `w_valid` / `w_ready` | in / out | 1 | weight stream handshake (one beat per step) |
| `z_payload` | in | {c.zero_beat_bits} | zero point per row ({c.weight_bits} bits each), one beat per quantization group (2^(bits-1) when symmetric) |
| `z_valid` / `z_ready` | in / out | 1 | zero stream handshake |
| `a_payload` | in | {c.act_beat_bits} | one M-group of int8 activations per column (token): column c lane i at bits [{c.max_m * 8}c + 8i, +8); lanes >= M ignored |
| `a_valid` / `a_ready` | in / out | 1 | activation stream handshake (one beat per M-group, held for N steps) |
| `r_payload` | out | {c.result_beat_bits} | int32 partial sum of every row (row r at bits [32r, 32r+32)) for one token and quantization group |
| `r_valid` / `r_ready` | out / in | 1 | result stream handshake |
| `ctl_regs` | in | {lo} | the runtime registers, a struct: {", ".join(fields)} |
| `ctl_start` | in | 1 | latch `ctl_regs` and run (ignored while busy) |
| `ctl_busy`, `ctl_done` | out | 1 | running; finished (held until the next start) |
| `ctl_error` | out | 1 | bad registers at start, or a position >= M was streamed |
| `ctl_cycles` | out | {c.counter_bits} | busy cycles of the last run |

Registers: `n`, `m` the runtime N:M pattern, 1 <= N <= M <= {c.max_m} (N == M:
dense); `windows` M-groups per quantization group (group size / M);
`groups` quantization groups in the run (all tiles back to back);
`row_tiles` consecutive passes sharing one token tile's activations
({reuse});
`pass_windows` M-groups per pass (K / M), at most {c.act_buffer_depth} when reusing.

Order of a run: for each tile of {c.cols} tokens, for each tile of {c.rows}
output rows, for each quantization group g: `windows` M-groups, each N
steps. A weight beat per step, an activation beat on the first step of an
M-group (with activation reuse: only in the first row tile of each token
tile), a zero beat on the first step of a group. Result beats: per group
and tile, {c.cols} beats, token (column) 0 first.

Result arithmetic: `P[token, row, g] = sum over the group's kept weights of
(code - zero) * q_act`, exact in int32, identical to
`nmq.backends.reference.partial_sums`; the host applies the fp16 weight
scales and the fp32 activation scales with the reference's own epilogue,
`nmq.backends.reference.w4a8_epilogue`.
"""
