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
    w, z, a = _ints(s.weight_words()), _ints(s.zero_words()), _ints(s.act_words())
    results: list[int] = []
    state = {"cycles": -1, "error": 0}

    async def bench(ctx):
        for name, value in s.registers().items():
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        wi = zi = ai = 0
        for _ in range(max_cycles):
            if ctx.get(dut.done):
                break
            hold = rng.random(4) < stall
            ctx.set(dut.r_ready, not hold[3])
            ctx.set(dut.w_valid, wi < len(w) and not hold[0])
            ctx.set(dut.w_data, w[wi] if wi < len(w) else 0)
            ctx.set(dut.z_valid, zi < len(z) and not hold[1])
            ctx.set(dut.z_data, z[zi] if zi < len(z) else 0)
            ctx.set(dut.a_valid, ai < len(a) and not hold[2])
            ctx.set(dut.a_data, a[ai] if ai < len(a) else 0)
            wi += bool(ctx.get(dut.w_ready) and ctx.get(dut.w_valid))
            zi += bool(ctx.get(dut.z_ready) and ctx.get(dut.z_valid))
            ai += bool(ctx.get(dut.a_ready) and ctx.get(dut.a_valid))
            if ctx.get(dut.r_valid) and ctx.get(dut.r_ready):
                results.append(ctx.get(dut.r_data))
            await ctx.tick()
        else:
            raise HardwareError(f"the Amaranth simulation did not finish within {max_cycles} cycles")
        state["cycles"] = ctx.get(dut.cycles)
        state["error"] = ctx.get(dut.error)
        state["consumed"] = (wi, zi, ai)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if state["error"]:
        raise HardwareError("the design raised its error flag (bad runtime registers or a position >= M)")
    if state["consumed"] != (len(w), len(z), len(a)):
        raise HardwareError(f"the design consumed {state['consumed']} of {(len(w), len(z), len(a))} "
                            "weight, zero and activation beats")
    mask = (1 << 32) - 1
    words = np.array([[(v >> (32 * r)) & mask for r in range(cfg.rows)] for v in results], dtype=np.uint32)
    return words.reshape(-1, cfg.rows), state["cycles"]
