"""Run the generated design in Amaranth's own simulator (small arrays, unit tests).

Cycle for cycle the same protocol as the Verilator harness: every stream is
offered as soon as it has data, results are always accepted, and the run
ends on ``done``.
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from ..config import AcceleratorConfig, HardwareError
from ..rtl.top import Accelerator
from .streams import Streams


def _ints(words: np.ndarray) -> list[int]:
    return [int.from_bytes(row.tobytes(), "little") for row in np.ascontiguousarray(words)]


def run_streams(cfg: AcceleratorConfig, s: Streams, max_cycles: int = 1_000_000,
                stall: float = 0.0, seed: int = 0) -> tuple[np.ndarray, int]:
    """Result words ``[beats, rows]`` and the design's cycle counter for one run.

    ``stall`` > 0 withholds each input's valid and the result ready at random
    with that probability per cycle, to exercise the back-pressure paths.
    """
    dut = Accelerator(cfg)
    rng = np.random.default_rng(seed)
    inputs = [(dut.w, _ints(s.weight_words())), (dut.z, _ints(s.zero_words())), (dut.a, _ints(s.act_words()))]
    results: list[int] = []
    state = {"cycles": -1, "error": 0}

    async def bench(ctx):
        # The register words the Verilator harness gets, so both simulators test the host's packing.
        ctx.set(dut.ctl.regs.as_value(), int.from_bytes(s.register_words().tobytes(), "little"))
        ctx.set(dut.ctl.start, 1)
        await ctx.tick()
        ctx.set(dut.ctl.start, 0)
        taken = [0] * len(inputs)
        for _ in range(max_cycles):
            if ctx.get(dut.ctl.done):
                break
            hold = rng.random(len(inputs) + 1) < stall
            ctx.set(dut.r.ready, not hold[-1])
            for i, (port, beats) in enumerate(inputs):
                ctx.set(port.valid, taken[i] < len(beats) and not hold[i])
                ctx.set(port.payload.as_value(), beats[taken[i]] if taken[i] < len(beats) else 0)
            for i, (port, _) in enumerate(inputs):
                taken[i] += bool(ctx.get(port.ready) and ctx.get(port.valid))
            if ctx.get(dut.r.valid) and ctx.get(dut.r.ready):
                results.append(ctx.get(dut.r.payload.as_value()))
            await ctx.tick()
        else:
            raise HardwareError(f"the Amaranth simulation did not finish within {max_cycles} cycles")
        state["cycles"] = ctx.get(dut.ctl.cycles)
        state["error"] = ctx.get(dut.ctl.error)
        state["consumed"] = tuple(taken)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    offered = tuple(len(beats) for _, beats in inputs)
    if state["error"]:
        raise HardwareError("the design raised its error flag (bad runtime registers or a position >= M)")
    if state["consumed"] != offered:
        raise HardwareError(f"the design consumed {state['consumed']} of {offered} "
                            "weight, zero and activation beats")
    mask = (1 << 32) - 1
    words = np.array([[(v >> (32 * r)) & mask for r in range(cfg.rows)] for v in results], dtype=np.uint32)
    return words.reshape(-1, cfg.rows), state["cycles"]
