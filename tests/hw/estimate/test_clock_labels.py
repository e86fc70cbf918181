"""The fpga-model rows of `nmq bench e2e` and the report's FPGA figures say which clock they use."""

from __future__ import annotations

from nmq.apps.report import _e2e, _hardware
from nmq.bench.e2e.configs import CONFIGS
from nmq.bench.e2e.models import FPGA_DESIGN, FPGA_DEVICE, fpga_estimate
from nmq.hw.config import AcceleratorConfig
from nmq.hw.estimate.clocks import record_clock
from nmq.hw.estimate.cycle_model import model_estimate


def test_fpga_rows_state_an_assumed_clock_and_keep_their_numbers(clock_store):
    r = fpga_estimate(CONFIGS["fpga-model-2:4-int4"], "llama-7b")
    e = model_estimate(AcceleratorConfig(**FPGA_DESIGN), "llama-7b", (2, 4), 4, 128, 1)
    assert r["ms_per_token"] == 1000 / e["tokens_per_second"]
    assert (r["clock_mhz"], r["clock_kind"], r["device"]) == (300.0, "assumed", "zcu104")
    assert r["clock_source"].startswith("assumed: 300 MHz")


def test_fpga_rows_use_a_measured_clock_of_their_design(clock_store):
    record_clock(AcceleratorConfig(**FPGA_DESIGN), FPGA_DEVICE[0], 150.0, {"seed": 2, "tools": {"nextpnr": "x"}})
    r = fpga_estimate(CONFIGS["fpga-model-dense-int4"], "llama-7b")
    assert (r["clock_mhz"], r["clock_kind"]) == (150.0, "measured") and "seed 2" in r["clock_source"]


def test_report_tables_name_the_clock():
    old = {"config": "fpga-model-2:4-int4", "backend": "fpga-cycle-model", "ms_per_token": 1.0, "tokens_per_s": 1.0,
           "design": {"clock_mhz": 300.0}}
    new = {**old, "clock_mhz": 62.5, "clock_source": "measured: d on ecp5-85f, nextpnr 0.11.1, seed 1"}
    cpu = {"config": "nmq-2:4-int4", "backend": "cpu", "ms_per_token": 1.0, "tokens_per_s": 1.0}
    _, _, rows = _e2e([old, new, cpu])
    measured = "62.5 MHz, measured: d on ecp5-85f, nextpnr 0.11.1, seed 1"
    assert [r["clock"] for r in rows] == ["300 MHz, assumed", measured, "-"]
    point = {"rows": 4, "cols": 1, "lut": 1, "tokens_per_second": 1.0}
    title, _, rows = _hardware({"budget": {"name": "zcu104"}, "clock_mhz": 300.0, "front": [point]})
    assert "assumed: 300 MHz" in title and rows[0]["clock"] == "300 MHz assumed"
    title, _, rows = _hardware({"budget": {"name": "ecp5-85f"}, "clock_source": "measured: d on ecp5-85f",
                                "front": [{**point, "clock_mhz": 62.5, "clock_kind": "measured"}]})
    assert "measured: d on ecp5-85f" in title and rows[0]["clock"] == "62.5 MHz measured"
