"""Energy per token: its terms follow the counts, sparsity saves off-chip energy, the clock sets the static share."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from nmq.cli.main import main
from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.estimate import energy
from nmq.hw.estimate.clocks import record_clock
from nmq.hw.estimate.explore import energy_report, parse_budget, parse_device

PATTERNS = [(4, 4), (2, 4), (4, 8), (1, 4)]
DESIGN = AcceleratorConfig(rows=64, cols=1, max_m=8, act_buffer_depth=3072)


@pytest.mark.parametrize("budget", ["zcu104", "ecp5-85f"])
def test_energy_terms_are_counts_times_constants(budget):
    plat = energy.platform(parse_budget(budget))
    e = energy.token_energy(DESIGN, plat, "llama-7b", (2, 4))
    assert e["joules"]["offchip"] == pytest.approx(e["offchip_bytes"] * plat["offchip_pj_per_byte"] * 1e-12)
    assert e["joules"]["mac"] == pytest.approx(e["macs"] * energy.mac_pj() * 1e-12)
    assert e["joules"]["onchip"] == pytest.approx(e["onchip_bytes"] * energy.onchip_pj_per_byte() * 1e-12)
    assert e["joules"]["static"] == pytest.approx(plat["static_w"] * e["seconds_per_step"])
    assert e["joules_per_token"] == pytest.approx(sum(e["joules"].values()))
    # More bytes or MACs per operation cost more energy.
    dearer = {**plat, "offchip_pj_per_byte": 2 * plat["offchip_pj_per_byte"]}
    assert energy.token_energy(DESIGN, dearer, "llama-7b", (2, 4))["joules_per_token"] > e["joules_per_token"]
    dense = energy.token_energy(DESIGN, plat, "llama-7b", (4, 4))
    assert dense["macs"] > e["macs"] and dense["joules"]["mac"] > e["joules"]["mac"]


@pytest.mark.parametrize("budget", ["zcu104", "ecp5-85f"])
def test_sparse_patterns_cost_less_offchip_energy_than_dense_int4(budget):
    plat = energy.platform(parse_budget(budget))
    e = {p: energy.token_energy(DESIGN, plat, "llama-7b", p) for p in PATTERNS}
    for p in PATTERNS[1:]:
        assert e[p]["offchip_bytes"] < e[(4, 4)]["offchip_bytes"]
        assert e[p]["joules"]["offchip"] < e[(4, 4)]["joules"]["offchip"]
        assert e[p]["joules_per_token"] < e[(4, 4)]["joules_per_token"]
    assert e[(1, 4)]["joules_per_token"] < e[(2, 4)]["joules_per_token"]


def test_a_slower_clock_costs_static_energy_when_compute_bound():
    plat = energy.platform(parse_budget("zcu104"))
    small = AcceleratorConfig(rows=8, cols=1, max_m=4)       # compute bound at 19.2 GB/s
    fast = energy.token_energy(small, plat, "llama-7b", (2, 4))
    slow = energy.token_energy(replace(small, clock_mhz=150.0), plat, "llama-7b", (2, 4))
    assert slow["joules"]["static"] == pytest.approx(2 * fast["joules"]["static"], rel=1e-3)
    assert slow["joules"]["offchip"] == fast["joules"]["offchip"] and slow["joules"]["mac"] == fast["joules"]["mac"]


def test_activation_buffer_traffic_is_on_chip():
    plain = energy.onchip_bytes(AcceleratorConfig(rows=16, cols=1), 4096, 4096, 1, 4, 128)
    buffered = energy.onchip_bytes(AcceleratorConfig(rows=16, cols=1, act_buffer_depth=1024), 4096, 4096, 1, 4, 128)
    # 256 row tiles (one writes, 255 replay) read 1024 windows, each a beat of max M = 8 bytes; the result
    # FIFO's traffic is the same in both.
    assert buffered - plain == 256 * 1024 * 8


def test_energy_report_labels_its_clock(clock_store):
    budget = parse_device("ecp5-85f")
    r = energy_report(budget, "llama-7b", PATTERNS)
    assert [p["pattern"] for p in r["patterns"]] == ["dense (4:4)", "2:4", "4:8", "1:4"]
    assert r["clock_kind"] == "assumed" and "estimate" in r["estimate"]
    assert all(c["source"] for c in r["constants"].values())
    design = AcceleratorConfig.from_dict(r["config"])
    record_clock(design, "ecp5-85f", 50.0, {"seed": 1, "tools": {"nextpnr": "nextpnr-0.11.1"}})
    again = energy_report(budget, "llama-7b", PATTERNS, design=design)
    assert (again["clock_kind"], again["clock_mhz"]) == ("measured", 50.0)
    assert again["patterns"][1]["joules"]["static"] >= r["patterns"][1]["joules"]["static"]
    with pytest.raises(HardwareError, match="exceeds the design's max M 4"):
        energy_report(budget, "llama-7b", [(4, 8)], design=AcceleratorConfig(rows=8, cols=1, max_m=4))


def test_cpu_energy_is_unavailable_without_counters():
    called = []
    r = energy.cpu_energy(lambda: called.append(1) or 1, root=Path("/nonexistent/powercap"))
    assert r["joules_per_token"] is None and r["status"].startswith("unavailable: ") and not called
    if not energy.POWERCAP.exists():
        here = energy.cpu_energy(lambda: called.append(1) or 1)
        assert here["joules_per_token"] is None and "does not exist" in here["status"] and not called


def test_cli_energy_json(clock_store, capsys):
    assert main(["hw", "energy", "--model", "llama-7b", "--device", "ecp5-85f", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["patterns"]) == 4 and r["clock_source"].startswith("assumed")
    if not energy.POWERCAP.exists():
        assert r["cpu"]["status"].startswith("unavailable: ") and r["cpu"]["joules_per_token"] is None
    assert main(["hw", "energy", "--budget", "zcu104", "--patterns", "2:4,1:4"]) == 0
    text = capsys.readouterr().out
    assert "2:4" in text and "CPU (measured)" in text and "Horowitz" in text
