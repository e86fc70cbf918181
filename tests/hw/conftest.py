"""Shared fixtures of the hardware tests: generated designs, built once per session."""

from __future__ import annotations

import pytest

from nmq.hw.config import AcceleratorConfig
from nmq.hw.sim.harness import VerilatorSim, verilator_reason


def verilator_design(tmp_path_factory, cfg: AcceleratorConfig, name: str):
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed (pip install 'amaranth[builtin-yosys]')")
    reason = verilator_reason()
    if reason:
        pytest.skip(f"Verilator end-to-end test skipped: {reason}")
    from nmq.hw.rtl.generate import generate

    d = tmp_path_factory.mktemp(name)
    info = generate(cfg, d)
    VerilatorSim(d).build()
    return d, info


@pytest.fixture(scope="session")
def small_design(tmp_path_factory):
    """A 4 x 4 array, max M 8, 8-bit weights, a 64-window activation buffer.

    Every required pattern and both widths run on it; layers with K / M <= 64
    replay activations from the buffer, wider ones stream every pass.
    """
    cfg = AcceleratorConfig(rows=4, cols=4, max_m=8, weight_bits=8, act_buffer_depth=64)
    return verilator_design(tmp_path_factory, cfg, "r4c4")


@pytest.fixture(scope="session")
def llama_design(tmp_path_factory):
    """The default 16 x 16 array, max M 8, 4-bit weights (a build of a few minutes)."""
    return verilator_design(tmp_path_factory, AcceleratorConfig(rows=16, cols=16, max_m=8, weight_bits=4), "r16c16")
