"""Cycle model, resource estimate, exploration, the generate/explore CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.estimate.cycle_model import layer_cycles, model_estimate, run_cycles
from nmq.hw.estimate.explore import (
    BOARDS,
    CALIBRATION,
    VALIDATION,
    estimate_resources,
    explore,
    pareto,
    parse_budget,
)


def test_cycle_model_counts_n_steps_per_m_group():
    cfg = AcceleratorConfig(rows=16, cols=16)
    dense = layer_cycles(cfg, 4096, 4096, 1, 4, 4, 128).compute_cycles
    for (n, m), limit in {(2, 4): 0.55, (4, 8): 0.55, (1, 4): 0.30}.items():
        assert layer_cycles(cfg, 4096, 4096, 1, n, m, 128).compute_cycles <= limit * dense
    # 256 row tiles x 32 groups x 64 steps, plus the drain.
    assert layer_cycles(cfg, 4096, 4096, 16, 2, 4, 128).compute_cycles == 256 * 32 * 64 + 16 + 32 + 5
    # A 17th token needs a second token tile: twice the passes.
    assert layer_cycles(cfg, 4096, 4096, 17, 2, 4, 128).compute_cycles == 2 * 256 * 32 * 64 + 16 + 32 + 5


def test_short_groups_are_padded_to_the_columns():
    cfg = AcceleratorConfig(rows=4, cols=8)
    # 1:8 with groups of 16: 2 steps per group, padded to 8.
    assert run_cycles(cfg, 10, 2) == 10 * 8 - 6 + 4 + 16 + 5


def test_bandwidth_bound_binds_for_decode_on_a_big_array():
    cfg = AcceleratorConfig(rows=256, cols=1, bandwidth_gbs=1.0)
    e = layer_cycles(cfg, 4096, 4096, 1, 2, 4, 128, bits=4)
    assert e.bound == "bandwidth" and e.cycles == e.bandwidth_cycles > e.compute_cycles
    # 2 kept codes of 4 bits + 2-bit index each per 4 weights, fp16 scale per 128: 3.125 bits per weight.
    assert e.weight_bytes == 4096 * 4096 * 3.125 / 8


def test_whole_llama_estimate_is_fast_and_consistent():
    cfg = AcceleratorConfig()
    r = model_estimate(cfg, "llama-7b", (2, 4), 4, 128, 1)
    assert len(r["layers"]) == 7 and r["cycles"] >= r["compute_cycles"] > 0
    assert r["tokens_per_second"] > 0
    with pytest.raises(HardwareError, match="accepted"):
        model_estimate(cfg, "gpt-5")


def test_resource_estimate_tracks_the_yosys_calibration():
    for point in CALIBRATION + VALIDATION:
        r, c, m, w = point["config"]
        est = estimate_resources(AcceleratorConfig(rows=r, cols=c, max_m=m, weight_bits=w))
        assert est["dsp"] == point["dsp"]
        for key in ("lut", "ff"):
            assert abs(est[key] - point[key]) <= 0.07 * point[key], (point, est)


def test_explore_respects_the_budget_and_returns_a_front():
    budget = parse_budget("20000,30000,200,100")
    r = explore(budget, "llama-7b", (2, 4), 4, 128, tokens=4)
    assert r["front"] and r["chosen"] in r["front"]
    for p in r["front"]:
        assert p["lut"] <= 20000 and p["ff"] <= 30000 and p["dsp"] <= 200
    tps = [p["tokens_per_second"] for p in r["front"]]
    assert tps == sorted(tps)
    assert pareto(r["front"]) == r["front"]
    assert parse_budget("zcu104")["dsp"] == BOARDS["zcu104"]["dsp"]
    with pytest.raises(HardwareError, match="accepted"):
        parse_budget("lots")
    with pytest.raises(HardwareError, match="no array configuration fits"):
        explore(parse_budget("10,10,1,1"))


def test_config_rejects_out_of_range_values(tmp_path):
    with pytest.raises(HardwareError, match="max_m"):
        AcceleratorConfig(max_m=17)
    with pytest.raises(HardwareError, match="weight_bits"):
        AcceleratorConfig(weight_bits=5)
    cfg = AcceleratorConfig(rows=3, cols=5, max_m=16, weight_bits=8)
    cfg.save(tmp_path / "config.json")
    assert AcceleratorConfig.load(tmp_path) == cfg
    (tmp_path / "config.json").write_text('{"rows": 4, "colz": 2}')
    with pytest.raises(HardwareError, match="unknown field"):
        AcceleratorConfig.load(tmp_path)


def _nmq(*args):
    return subprocess.run([sys.executable, "-m", "nmq", *args], capture_output=True, text=True, check=False)


def test_cli_generate_and_explore(tmp_path):
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed")
    proc = _nmq("hw", "generate", "--rows", "2", "--cols", "3", "--max-m", "16", "--weight-bits", "8",
                "-o", str(tmp_path / "d"), "--no-lint", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["config"]["max_m"] == 16 and info["top"] == "nmq_accel"
    text = (tmp_path / "d" / "nmq_accel.v").read_text()
    header = re.search(r"module nmq_accel\((.*?)\);", text, re.DOTALL)
    # The stream and control interfaces, flattened with "_" (see rtl/generate.py).
    streams = {f"{s}_{m}" for s in "wzar" for m in ("payload", "valid", "ready")}
    control = {f"ctl_{m}" for m in ("regs", "start", "busy", "done", "error", "cycles")}
    assert set(header[1].replace(" ", "").split(",")) == {"clk", "rst"} | streams | control
    # n and m of 5 bits each (max M 16), then 16 + 32 + 16 + 32 bits of counts.
    assert "input [105:0] ctl_regs;" in text
    assert "`ctl_regs` | in | 106 |" in (tmp_path / "d" / "README.md").read_text()
    proc = _nmq("hw", "explore", "--budget", "ultra96v2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["chosen"]["dsp"] <= BOARDS["ultra96v2"]["dsp"]
    proc = _nmq("hw", "generate", "--rows", "0", "-o", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "rows=0" in proc.stderr and "Traceback" not in proc.stderr
