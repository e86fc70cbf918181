"""Run a compressed layer through the generated RTL and check it against the reference.

:class:`VerilatorSim` builds the emitted Verilog with the project's own
harness (``harness.py``) once per design (cached in ``DIR/verilator/``, keyed
by the Verilog and harness hashes), then each run writes the beat streams as
word files and lets the C++ loop stream them: Python never steps a cycle.
``backend="amaranth"`` runs the same streams in Amaranth's simulator
instead (small arrays only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...backends.base import check_input
from ...backends.reference import partial_sums, quantized_activations
from ...format.tensor import NMQTensor
from ..config import AcceleratorConfig, HardwareError
from ..estimate.cycle_model import layer_cycles
from ..rtl.generate import LINT_WAIVERS, TOP, VERILOG
from .harness import HARNESS_CPP
from .streams import Streams, build_streams

BACKENDS = ("verilator", "amaranth")


def verilator_reason() -> str | None:
    """None when Verilator and a C++ compiler are usable, else why not."""
    if shutil.which("verilator") is None:
        return "verilator is not installed (run scripts/install-hw-tools.sh)"
    if shutil.which("g++") is None and shutil.which("clang++") is None:
        return "no C++ compiler (g++ or clang++) for Verilator's model"
    return None


class VerilatorSim:
    """A Verilator model of one generated design directory."""

    def __init__(self, design_dir: str | Path, jobs: int = 2, opt: str = "-O1", vopt: str = "-fno-merge-cond"):
        self.dir = Path(design_dir)
        self.cfg = AcceleratorConfig.load(self.dir)
        self.verilog = self.dir / VERILOG
        if not self.verilog.is_file():
            raise HardwareError(f"{self.dir}: no {VERILOG}; accepted a directory written by 'nmq hw generate'")
        # Verilator's merge-cond pass alone takes most of a minute on a 16x16
        # array (measured with --stats) and the model runs as fast without it.
        self.jobs, self.opt, self.vopt = jobs, opt, vopt

    def _key(self) -> str:
        h = hashlib.sha256()
        for part in (self.verilog.read_bytes(), HARNESS_CPP.encode(), self.opt.encode(), self.vopt.encode(), " ".join(LINT_WAIVERS).encode()):
            h.update(hashlib.sha256(part).digest())
        return h.hexdigest()[:16]

    def build(self) -> Path:
        """The harness executable, compiled now unless a build for this Verilog exists."""
        reason = verilator_reason()
        if reason:
            raise HardwareError(f"cannot simulate with Verilator: {reason}")
        build = self.dir / "verilator" / self._key()
        exe = build / "Vnmq"
        if exe.is_file():
            return exe
        (self.dir / "verilator").mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=self.dir / "verilator"))
        harness = tmp / "harness.cpp"
        harness.write_text(HARNESS_CPP)
        cmd = [
            "verilator", "--cc", "--exe", "--build", "-j", str(self.jobs), self.vopt, *LINT_WAIVERS,
            "--output-split", "20000",
            "--x-assign", "fast", "--x-initial", "fast", "--noassert",
            "--top-module", TOP, "--prefix", "Vnmq", "-Mdir", str(tmp), "-o", "Vnmq",
            "-CFLAGS", f"{self.opt} -std=c++17", str(self.verilog.resolve()), str(harness),
        ]
        env = dict(os.environ, OPT_FAST=self.opt, OPT_SLOW="-O0", OPT_GLOBAL="-O1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise HardwareError(f"Verilator build of {self.verilog} failed: {(proc.stderr or proc.stdout)[-600:]}")
        try:
            tmp.rename(build)
        except OSError:
            # Another process finished the same build first; theirs is as good.
            shutil.rmtree(tmp, ignore_errors=True)
            if not exe.is_file():
                raise
        return exe

    def run(self, s: Streams, max_cycles: int | None = None) -> tuple[np.ndarray, dict]:
        """Result words ``[beats, rows]`` and the harness's report (cycles, sim seconds)."""
        if s.cfg != self.cfg:
            raise HardwareError("the streams were built for another accelerator configuration than this design")
        exe = self.build()
        streams = {"w": s.weight_words(), "z": s.zero_words(), "a": s.act_words()}
        if max_cycles is None:
            max_cycles = 4 * (len(streams["w"]) + s.total_groups * self.cfg.cols) + 10_000
        with tempfile.TemporaryDirectory(prefix="nmq-hw-") as tmp:
            paths = {}
            for name, words in streams.items():
                paths[name] = Path(tmp) / f"{name}.bin"
                words.tofile(paths[name])
            rpath = Path(tmp) / "r.bin"
            rw = self.cfg.rows
            cmd = [str(exe), str(paths["w"]), str(paths["z"]), str(paths["a"]), str(rpath),
                   *map(str, (s.n, s.m, s.windows, s.total_groups)),
                   *map(str, (s.registers()["cfg_row_tiles"], s.registers()["cfg_pass_windows"])),
                   *map(str, (streams["w"].shape[1], streams["z"].shape[1], streams["a"].shape[1], rw)),
                   str(max_cycles)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise HardwareError(f"the Verilator harness failed: {proc.stderr.strip()[-400:]}")
            report = json.loads(proc.stdout)
            words = np.fromfile(rpath, dtype="<u4").reshape(-1, rw)
        if not report["done"]:
            raise HardwareError(f"the design did not finish within {max_cycles} cycles")
        if report["error"]:
            raise HardwareError("the design raised its error flag (bad runtime registers or a position >= M)")
        if report["consumed"] != report["offered"]:
            raise HardwareError(f"the design consumed {report['consumed']} of {report['offered']} weight/zero/activation beats")
        return words, report


@dataclass
class LayerRun:
    """One layer through the RTL: partial sums, the reference's verdict, cycles."""

    partial_sums: torch.Tensor     # int32 [tokens, out, groups]
    act_scales: torch.Tensor       # fp32 [tokens, groups]
    cycles: int                    # the design's own cycle counter
    model_cycles: int              # the cycle model's count for the same run
    bit_exact: bool | None         # None when the comparison was skipped
    seconds: float                 # wall time of the simulation (build excluded)
    sim_seconds: float             # of which the RTL model's own loop

    def outputs(self, t: NMQTensor) -> torch.Tensor:
        """fp32 ``y [tokens, out]``: the scales applied on the host, in the reference's order."""
        w_scales = t.scales.float()
        p = self.partial_sums
        y = torch.zeros(p.shape[0], p.shape[1], dtype=torch.float32)
        for g in range(p.shape[2]):
            y += (w_scales[:, g].unsqueeze(0) * self.act_scales[:, g].unsqueeze(1)) * p[:, :, g].float()
        return y


def simulate_layer(design: str | Path | AcceleratorConfig, t: NMQTensor, x: torch.Tensor,
                   backend: str = "verilator", check: bool = True) -> LayerRun:
    """Run ``x [tokens, in]`` (float) times ``t`` through the design; compare with the reference."""
    if backend not in BACKENDS:
        raise HardwareError(f"simulation backend {backend!r} is unknown; accepted: {', '.join(BACKENDS)}")
    x = check_input(x, t)
    q, scales = quantized_activations(x, t)
    if backend == "verilator":
        if isinstance(design, AcceleratorConfig):
            raise HardwareError("Verilator needs a generated design directory; accepted the DIR of 'nmq hw generate'")
        sim = VerilatorSim(design)
        cfg = sim.cfg
        sim.build()
    else:
        cfg = design if isinstance(design, AcceleratorConfig) else AcceleratorConfig.load(design)
    t0 = time.perf_counter()
    s = build_streams(t, q, cfg)
    if backend == "verilator":
        words, report = sim.run(s)
        cycles, sim_seconds = report["cycles"], report["sim_seconds"]
    else:
        from .amaranth import run_streams

        t1 = time.perf_counter()
        words, cycles = run_streams(cfg, s)
        sim_seconds = time.perf_counter() - t1
    p = s.unpack_results(words)
    seconds = time.perf_counter() - t0
    exact = None
    if check:
        ref, _ = partial_sums(x, t)
        exact = bool(torch.equal(p, ref))
    model = layer_cycles(cfg, t.out_features, t.padded_in, x.shape[0], t.pattern.n, t.pattern.m, t.group)
    return LayerRun(p, scales, int(cycles), model.compute_cycles, exact, seconds, sim_seconds)
