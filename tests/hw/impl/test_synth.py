"""Yosys synthesis of a generated design (resource counts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _nmq(*args):
    return subprocess.run([sys.executable, "-m", "nmq", *args], capture_output=True, text=True, check=False)


def test_yosys_synthesis_counts(tmp_path):
    """A 1 x 2 array through `nmq hw synth`: one DSP per PE (+1 for the controller), FFs and LUTs > 0."""
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed")
    from nmq.hw.impl.synth import yosys_exe

    if yosys_exe() is None:
        pytest.skip("yosys is not installed (run scripts/install-hw-tools.sh)")
    d = tmp_path / "d"
    assert _nmq("hw", "generate", "--rows", "1", "--cols", "2", "--max-m", "4", "-o", str(d), "--no-lint").returncode == 0
    proc = _nmq("hw", "synth", str(d), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert {"lut", "ff", "dsp", "bram", "yosys_version", "flags"} <= set(r)
    assert r["dsp"] == 2 and r["ff"] > 100 and r["lut"] > 100 and r["bram"] == 0
    assert "synth_xilinx -family xcup" in r["flags"] and r["yosys_version"].startswith("Yosys")


def test_replicated_window_enables_survive_synthesis(tmp_path):
    """Each column's window enable stays its own flip-flop after Yosys (``keep`` on the cells, not only the wires)."""
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed")
    from nmq.hw.config import AcceleratorConfig
    from nmq.hw.impl.synth import yosys_exe
    from nmq.hw.rtl.generate import verilog_text

    if yosys_exe() is None:
        pytest.skip("yosys is not installed (run scripts/install-hw-tools.sh)")
    cols = 3
    (tmp_path / "a.v").write_text(verilog_text(AcceleratorConfig(rows=2, cols=cols, max_m=4)))
    # The flip-flops driving the enables, after a full generic synthesis (opt_merge included).
    script = "read_verilog a.v; synth -flatten -top nmq_accel; tee -o sel.txt select -list w:win_ce_* %ci1 c:* %i"
    proc = subprocess.run([yosys_exe(), "-q", "-p", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-400:]
    drivers = [line for line in (tmp_path / "sel.txt").read_text().split() if line]
    assert len(drivers) == cols, drivers
