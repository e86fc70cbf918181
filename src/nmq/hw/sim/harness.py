"""The Verilator model of a generated design: ``harness.cpp`` compiled with its Verilog, and runs of it.

The harness ships as package data next to this module (read through
``importlib.resources``, so it is found in a wheel as in an editable
install) and is copied into each build. :class:`VerilatorSim` builds it once
per design (cached in ``DIR/verilator/``, keyed by the Verilog and harness
hashes), then each run writes the beat streams and the register struct as
word files and passes them, with the beat sizes, as named parameters
(``--weights FILE --weight-words 2 ...``): the C++ loop streams them and
Python never steps a cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from ..config import AcceleratorConfig, HardwareError
from ..rtl.generate import LINT_WAIVERS, TOP, VERILOG
from .streams import Streams

HARNESS = "harness.cpp"


def harness_source() -> str:
    return resources.files(__package__).joinpath(HARNESS).read_text()


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
        for part in (self.verilog.read_bytes(), harness_source().encode(), self.opt.encode(), self.vopt.encode(),
                     " ".join(LINT_WAIVERS).encode()):
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
        harness = tmp / HARNESS
        harness.write_text(harness_source())
        cmd = [
            "verilator", "--cc", "--exe", "--build", "-j", str(self.jobs), self.vopt, *LINT_WAIVERS,
            "--output-split", "20000",
            "--x-assign", "fast", "--x-initial", "fast", "--noassert",
            "--top-module", TOP, "--prefix", "Vnmq", "-Mdir", str(tmp), "-o", "Vnmq",
            "-CFLAGS", f"{self.opt} -std=c++17", str(self.verilog.resolve()), str(harness),
        ]
        env = dict(os.environ, OPT_FAST=self.opt, OPT_SLOW="-O0", OPT_GLOBAL="-O1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
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
        files = {"weights": s.weight_words(), "zeros": s.zero_words(), "acts": s.act_words(),
                 "regs": s.register_words()}
        if max_cycles is None:
            max_cycles = 4 * (len(files["weights"]) + s.total_groups * self.cfg.cols) + 10_000
        rw = self.cfg.rows
        with tempfile.TemporaryDirectory(prefix="nmq-hw-") as tmp:
            params: dict[str, object] = {}
            for name, words in files.items():
                params[name] = Path(tmp) / f"{name}.bin"
                words.tofile(params[name])
            params.update({"weight-words": files["weights"].shape[1], "zero-words": files["zeros"].shape[1],
                           "act-words": files["acts"].shape[1], "results": Path(tmp) / "results.bin",
                           "result-words": rw, "max-cycles": max_cycles})
            cmd = [str(exe)] + [arg for name, value in params.items() for arg in (f"--{name}", str(value))]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise HardwareError(f"the Verilator harness failed: {proc.stderr.strip()[-400:]}")
            report = json.loads(proc.stdout)
            words = np.fromfile(params["results"], dtype="<u4").reshape(-1, rw)
        if not report["done"]:
            raise HardwareError(f"the design did not finish within {max_cycles} cycles")
        if report["error"]:
            raise HardwareError("the design raised its error flag (bad runtime registers or a position >= M)")
        if report["consumed"] != report["offered"]:
            raise HardwareError(f"the design consumed {report['consumed']} of {report['offered']} weight/zero/activation beats")
        return words, report
