"""The FPGA accelerator: an N:M zero-skipping systolic array generated in Amaranth HDL.

* :mod:`nmq.hw.config`: :class:`AcceleratorConfig`, the elaboration parameters;
* :mod:`nmq.hw.rtl`: the processing element, the array, the top level (Amaranth);
* :mod:`nmq.hw.rtl.layouts`: the stream signatures and data layouts of their interfaces;
* :mod:`nmq.hw.rtl.generate`: Verilog, config JSON, ports README, Verilator lint;
* :mod:`nmq.hw.sim.streams`: tiling an NMQTensor and activations into port beats;
* :mod:`nmq.hw.sim.harness`: the C++ Verilator harness (``harness.cpp``), its build and runs;
* :mod:`nmq.hw.sim.driver`: a layer through the RTL, bit-exact check against the reference;
* :mod:`nmq.hw.sim.amaranth`: the same runs in Amaranth's simulator (small arrays);
* :mod:`nmq.hw.estimate.cycle_model`: the schedule in closed form, with an off-chip bandwidth bound;
* :mod:`nmq.hw.impl.synth`: Yosys synthesis for Xilinx UltraScale+;
* :mod:`nmq.hw.estimate.explore`: design-space sweep under a device budget.

Only :mod:`nmq.hw.rtl`, :mod:`nmq.hw.rtl.generate` (when emitting) and
:mod:`nmq.hw.sim.amaranth` need Amaranth; the cycle model and exploration
run without it. See ``docs/hardware.md``.
"""

from .config import AcceleratorConfig, HardwareError

__all__ = ["AcceleratorConfig", "HardwareError"]
