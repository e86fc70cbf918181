"""The cycle model: the array's schedule in closed form, plus an off-chip bandwidth bound.

Compute cycles of one run (``rtl/top.py``), with ``g = windows * N`` steps per
quantization group and ``G`` groups in the run (all tiles back to back):

    cycles = G * max(g, cols) - max(0, cols - g) + rows + 2 * cols + 5

``G * max(g, cols)``: every group issues its steps, padded with bubbles to
``cols`` so the result chain empties in time; the last group's padding
overlaps the drain. ``rows + 2 * cols + 5``: the drain of the last step
(issue register, row skew, the row, the PE's three stages, the result chain,
the FIFO, ``done``).
The formula is checked against the RTL's own cycle counter in tests/hw.

Bandwidth bound: the bytes a run moves over the off-chip interface, over the
configured bandwidth: compressed weights (codes, ``index`` metadata, fp16
scales, zeros) once per token tile; int8 activations once per token tile
when the design's activation buffer holds a pass (``act_buffer_depth`` >=
K / M), else once per row tile, as the activation stream is then re-sent
for every tile of output rows; int32 results. Estimated cycles are the
larger of compute and bandwidth cycles.

A 4096 x 4096 2:4 layer, groups of 128, on a 16 x 16 array: 256 row tiles x
32 groups of 64 steps, plus the drain (the RTL counts the same):

>>> from nmq.hw.config import AcceleratorConfig
>>> run_cycles(AcceleratorConfig(rows=16, cols=16), total_groups=256 * 32, group_steps=64)
524341
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ...shapes import SHAPES, linear_shapes
from ..config import AcceleratorConfig

DRAIN = 5


@dataclass(frozen=True)
class LayerEstimate:
    compute_cycles: int
    bandwidth_cycles: int
    weight_bytes: int
    act_bytes: int
    result_bytes: int
    macs: int                 # multiply-accumulates issued (kept weights x tokens, with padding)

    @property
    def cycles(self) -> int:
        return max(self.compute_cycles, self.bandwidth_cycles)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_cycles >= self.bandwidth_cycles else "bandwidth"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(cycles=self.cycles, bound=self.bound)
        return d


def run_cycles(cfg: AcceleratorConfig, total_groups: int, group_steps: int) -> int:
    """Compute cycles of one run of ``total_groups`` groups of ``group_steps`` steps each."""
    c = cfg.cols
    return total_groups * max(group_steps, c) - max(0, c - group_steps) + cfg.rows + 2 * c + DRAIN


def layer_cycles(cfg: AcceleratorConfig, out_features: int, padded_in: int, tokens: int, n: int, m: int,
                 group: int, bits: int | None = None, symmetric: bool = True) -> LayerEstimate:
    """Cycles of ``y = x W^T`` for ``W [out, padded_in]`` N:M with quantization groups of ``group``."""
    bits = cfg.weight_bits if bits is None else bits
    row_tiles = -(-out_features // cfg.rows)
    token_tiles = -(-max(tokens, 1) // cfg.cols)
    groups = padded_in // group
    group_steps = group // m * n
    compute = run_cycles(cfg, row_tiles * token_tiles * groups, group_steps)

    kept = padded_in // m * n
    index_bits = 0 if n == m else max(1, math.ceil(math.log2(m)))
    row_bits = kept * (bits + index_bits) + groups * (16 + (0 if symmetric else bits))
    weight_bytes = math.ceil(out_features * row_bits / 8) * token_tiles
    reuse = row_tiles > 1 and padded_in // m <= cfg.act_buffer_depth
    act_bytes = max(tokens, 1) * padded_in * (1 if reuse else row_tiles)
    result_bytes = max(tokens, 1) * out_features * groups * 4
    total = weight_bytes + act_bytes + result_bytes
    bw_cycles = math.ceil(total / (cfg.bandwidth_gbs * 1e9) * cfg.clock_mhz * 1e6)
    macs = row_tiles * cfg.rows * token_tiles * cfg.cols * kept
    return LayerEstimate(compute, bw_cycles, weight_bytes, act_bytes, result_bytes, macs)


# Linear layers of one LLaMA decoder block: (name, out, in); lm_head kept apart (usually left dense).
def model_layers(model: str) -> list[tuple[str, int, int, int]]:
    """``(name, out, in, count)`` of every compressed linear layer of ``model`` (one of :data:`nmq.shapes.SHAPES`)."""
    from ..config import HardwareError

    if model not in SHAPES:
        raise HardwareError(f"model {model!r} is unknown to the cycle model; accepted: {', '.join(SHAPES)}")
    n = SHAPES[model]["num_hidden_layers"]
    return [(name, out, k, n) for name, out, k in linear_shapes(model)]


def model_estimate(cfg: AcceleratorConfig, model: str = "llama-7b", pattern: tuple[int, int] = (2, 4),
                   bits: int = 4, group: int = 128, tokens: int = 1) -> dict:
    """Cycles and time of one forward step of ``tokens`` tokens through every compressed layer."""
    n, m = pattern
    compute = total = 0
    layers = []
    for name, out, k, count in model_layers(model):
        g = k if group == -1 else group
        kp = -(-k // g) * g
        e = layer_cycles(cfg, out, kp, tokens, n, m, g, bits)
        compute += e.compute_cycles * count
        total += e.cycles * count
        layers.append({"name": name, "shape": [out, k], "count": count, **e.to_dict()})
    seconds = total / (cfg.clock_mhz * 1e6)
    return {
        "model": model, "pattern": f"{n}:{m}", "bits": bits, "group": group, "tokens": tokens,
        "compute_cycles": compute, "cycles": total, "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "layers": layers,
    }
