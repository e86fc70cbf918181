"""Run a compressed layer through the generated RTL and check it against the reference.

``backend="verilator"`` runs the streams through the Verilator model of a
generated design (:class:`~.harness.VerilatorSim`); ``backend="amaranth"``
runs them in Amaranth's simulator instead (small arrays only). The float
output applies the reference's own epilogue to the RTL's partial sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...backends.base import check_input
from ...backends.reference import partial_sums, quantized_activations, w4a8_epilogue
from ...format.tensor import NMQTensor
from ..config import AcceleratorConfig, HardwareError
from ..estimate.cycle_model import layer_cycles
from .harness import VerilatorSim
from .streams import build_streams

BACKENDS = ("verilator", "amaranth")


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
        """fp32 ``y [tokens, out]``: the scales applied on the host by the reference's epilogue."""
        return w4a8_epilogue(self.partial_sums, self.act_scales, t)


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
