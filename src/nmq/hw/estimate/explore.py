"""Design-space exploration: sweep array shapes under a device budget, Pareto front, generate the pick.

Throughput comes from the cycle model (``cycle_model.model_estimate``: every
compressed linear layer of the model, compute and off-chip bandwidth bound).
Resources come from :func:`estimate_resources`: flip-flops counted from the
RTL's structure, DSPs one per PE (Yosys maps each PE's multiplier to a
DSP48E2) plus one, LUTs from a per-PE cost fitted to Yosys runs of
generated designs (``CALIBRATION``), BRAM from the activation buffer's
shape (36 Kb blocks of 512 x 72). Every shape is tried without and with an
activation buffer deep enough for the model's widest layer. The estimate is for ranking; run
``nmq hw synth`` on the chosen design for its real counts.
"""

from __future__ import annotations

import math

from ..config import AcceleratorConfig, HardwareError
from .cycle_model import model_estimate

# Named budgets: usable programmable-logic resources of a few UltraScale+
# boards (BRAM in 36 Kb blocks) and the bandwidth of their DDR4 to the fabric.
BOARDS = {
    "ultra96v2": {"part": "xczu3eg", "lut": 70560, "ff": 141120, "dsp": 360, "bram": 216, "bandwidth_gbs": 8.5},
    "kv260": {"part": "xck26", "lut": 117120, "ff": 234240, "dsp": 1248, "bram": 144, "bandwidth_gbs": 19.2},
    "zcu104": {"part": "xczu7ev", "lut": 230400, "ff": 460800, "dsp": 1728, "bram": 312, "bandwidth_gbs": 19.2},
    "zcu102": {"part": "xczu9eg", "lut": 274080, "ff": 548160, "dsp": 2520, "bram": 912, "bandwidth_gbs": 19.2},
    "u250": {"part": "xcu250", "lut": 1728000, "ff": 3456000, "dsp": 12288, "bram": 2688, "bandwidth_gbs": 77.0},
}
RESOURCES = ("lut", "ff", "dsp", "bram")

# LUT cost model, least-squares fit of (LUT - SRL) = PEs * (a + b * max_m) + c,
# and FF_SCALE, the mean ratio of Yosys FFs to the structural count below,
# from `nmq hw synth` (Yosys 0.23, synth_xilinx -family xcup) of these designs:
CALIBRATION = [
    # rows, cols, max_m, weight_bits: Yosys LUT, FF, DSP
    {"config": (2, 2, 8, 4), "lut": 1074, "ff": 1221, "dsp": 5},
    {"config": (4, 4, 8, 4), "lut": 2961, "ff": 3249, "dsp": 17},
    {"config": (8, 4, 16, 8), "lut": 6330, "ff": 8356, "dsp": 33},
    {"config": (8, 8, 8, 4), "lut": 9721, "ff": 11359, "dsp": 65},
]
# Held out of the fit, to check it: the default 16 x 16 array (estimate: LUT +3%, FF -3%).
VALIDATION = [
    {"config": (16, 16, 8, 4), "lut": 34982, "ff": 43801, "dsp": 257},
]
LUT_PER_PE = 103.6
LUT_PER_PE_PER_M = 3.7
LUT_FIXED = 581.0
FF_SCALE = 0.93


def parse_budget(text: str) -> dict:
    """``"LUT,FF,DSP,BRAM"`` or a board name to a budget dict."""
    key = text.strip().lower()
    if key in BOARDS:
        return {"name": key, **BOARDS[key]}
    try:
        values = [float(v) for v in key.split(",")]
        if len(values) != 4 or any(v <= 0 for v in values):
            raise ValueError
    except ValueError:
        raise HardwareError(f"--budget {text!r}: accepted four positive numbers LUT,FF,DSP,BRAM "
                            f"or a board: {', '.join(BOARDS)}") from None
    return {"name": "custom", **dict(zip(RESOURCES, values))}


def structural_ffs(cfg: AcceleratorConfig) -> int:
    """Flip-flops of the generated RTL, counted register by register."""
    R, C, wb, pb, mb = cfg.rows, cfg.cols, cfg.weight_bits, cfg.pos_bits, cfg.m_bits
    win = cfg.max_m * cfg.act_bits
    pe = 3 * cfg.acc_bits + (wb + 1) + pb + win + 2
    skew = R * (R - 1) // 2 * (wb + 1 + pb + 2) + C * (C - 1) // 2 * win
    results = R * (R - 1) // 2 * (cfg.acc_bits + 1) + R * (C + 1).bit_length()
    issue = R * (wb + 1 + pb) + 2 + C * win
    held = C * win + R * wb
    control = 2 * mb + 16 + (16 + mb) + 2 * 41 + 32 + 16 + mb + 3 + (C + 1).bit_length() + cfg.counter_bits + 3
    fifo = cfg.result_beat_bits + 3 * max(1, math.ceil(math.log2(cfg.result_fifo_depth + 1)))
    return R * C * pe + skew + results + issue + held + control + fifo


def delay_lines(cfg: AcceleratorConfig) -> list[tuple[int, int]]:
    """``(length, bits)`` of the untapped, reset-less delay lines: row skew, column skew, result de-skew."""
    R, C = cfg.rows, cfg.cols
    lines = [(r, cfg.wval_bits + cfg.pos_bits) for r in range(R)]
    lines += [(c, cfg.max_m * cfg.act_bits) for c in range(C)]
    lines += [(R - 1 - r, cfg.acc_bits) for r in range(R)]
    return [(n, b) for n, b in lines if n > 0]


def estimate_resources(cfg: AcceleratorConfig) -> dict:
    """LUT/FF/DSP/BRAM estimate of a generated design (see the module's note)."""
    pes = cfg.rows * cfg.cols
    # Yosys turns delay lines of two or more registers into one SRL per bit,
    # and drops registers nothing reads (windows leaving the last row,
    # weights leaving the last column).
    srl_lines = [(n, b) for n, b in delay_lines(cfg) if n >= 2]
    srl = sum(b * -(-n // 32) for n, b in srl_lines)
    unread = cfg.cols * cfg.max_m * cfg.act_bits + cfg.rows * (cfg.wval_bits + cfg.pos_bits)
    ff = structural_ffs(cfg) - sum(n * b for n, b in srl_lines) - unread
    bram = 0
    if cfg.act_buffer_depth:
        bram = -(-cfg.act_beat_bits // 72) * -(-cfg.act_buffer_depth // 512)
        ff += cfg.act_beat_bits + 2 * 32 + 2 * 16      # read register, window address, pass counters
    return {
        "lut": round(pes * (LUT_PER_PE + LUT_PER_PE_PER_M * cfg.max_m) + LUT_FIXED) + srl,
        "ff": round(FF_SCALE * ff),
        "dsp": pes + 1,
        "bram": bram,
    }


def candidates(pattern_m: int, bits: int, clock_mhz: float, bandwidth_gbs: float,
               buffer_windows: int) -> list[AcceleratorConfig]:
    out = []
    for max_m in sorted({m for m in (4, 8, 16) if m >= pattern_m} or {pattern_m}):
        for rows in (4, 8, 16, 32, 64, 128, 256):
            for cols in (1, 2, 4, 8, 16, 32, 64):
                for depth in (0, buffer_windows):
                    out.append(AcceleratorConfig(rows=rows, cols=cols, max_m=max_m, weight_bits=4 if bits <= 4 else 8,
                                                 act_buffer_depth=depth, clock_mhz=clock_mhz,
                                                 bandwidth_gbs=bandwidth_gbs))
    return out


def pareto(points: list[dict]) -> list[dict]:
    """Points not dominated in (tokens/s up; LUT, FF, DSP, BRAM down)."""
    def dominates(a: dict, b: dict) -> bool:
        ge = a["tokens_per_second"] >= b["tokens_per_second"] and all(a[r] <= b[r] for r in RESOURCES)
        gt = a["tokens_per_second"] > b["tokens_per_second"] or any(a[r] < b[r] for r in RESOURCES)
        return ge and gt

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: p["tokens_per_second"])


def explore(budget: dict, model: str = "llama-7b", pattern: tuple[int, int] = (2, 4), bits: int = 4,
            group: int = 128, tokens: int = 1, clock_mhz: float = 300.0, bandwidth_gbs: float | None = None,
            output: str | None = None) -> dict:
    bw = bandwidth_gbs if bandwidth_gbs is not None else budget.get("bandwidth_gbs", 19.2)
    if "bandwidth_gbs" in budget and bandwidth_gbs is None:
        bw = budget["bandwidth_gbs"]
    from .cycle_model import model_layers

    widest = max(k for _, _, k, _ in model_layers(model))
    windows = -(-widest // (group if group > 0 else pattern[1])) * (group if group > 0 else pattern[1]) // pattern[1]
    points = []
    seen = set()
    for cfg in candidates(pattern[1], bits, clock_mhz, bw, -(-windows // 512) * 512):
        if cfg in seen:
            continue
        seen.add(cfg)
        res = estimate_resources(cfg)
        if any(res[r] > budget[r] for r in RESOURCES):
            continue
        est = model_estimate(cfg, model, pattern, bits, group, tokens)
        util = max(res[r] / budget[r] for r in RESOURCES if budget[r])
        points.append({
            "rows": cfg.rows, "cols": cfg.cols, "max_m": cfg.max_m, "weight_bits": cfg.weight_bits,
            "act_buffer": cfg.act_buffer_depth, **res,
            "utilization": round(util, 4), "tokens_per_second": est["tokens_per_second"],
            "cycles_per_step": est["cycles"], "compute_cycles_per_step": est["compute_cycles"],
            "bound": "compute" if est["cycles"] == est["compute_cycles"] else "bandwidth",
            "config": cfg.to_dict(),
        })
    if not points:
        raise HardwareError(f"no array configuration fits the budget {budget}; accepted a budget of at least "
                            f"{estimate_resources(AcceleratorConfig(rows=4, cols=1))}")
    front = pareto(points)
    best = max(front, key=lambda p: (round(p["tokens_per_second"], 6), -p["utilization"]))
    # Among designs within 1% of the best throughput, the cheapest.
    chosen = min((p for p in front if p["tokens_per_second"] >= 0.99 * best["tokens_per_second"]),
                 key=lambda p: p["utilization"])
    result = {
        "budget": budget, "model": model, "pattern": f"{pattern[0]}:{pattern[1]}", "bits": bits, "group": group,
        "batch": tokens, "clock_mhz": clock_mhz, "bandwidth_gbs": bw, "evaluated": len(points),
        "front": front, "chosen": chosen, "generated": None,
        "resource_model": "estimate (FF structural, DSP one per PE, LUT fitted to Yosys); run 'nmq hw synth' for counts",
    }
    if output:
        from ..rtl.generate import generate

        info = generate(AcceleratorConfig.from_dict(chosen["config"]), output)
        result["generated"] = info["dir"]
    return result


def format_front(r: dict) -> str:
    lines = [(f"{r['model']} {r['pattern']} {r['bits']}-bit, batch {r['batch']}, {r['clock_mhz']:g} MHz, "
              f"{r['bandwidth_gbs']:g} GB/s; budget {r['budget']['name']}: LUT {r['budget']['lut']:g}, "
              f"FF {r['budget']['ff']:g}, DSP {r['budget']['dsp']:g}, BRAM {r['budget']['bram']:g}"),
             (f"{'rows':>5} {'cols':>5} {'maxM':>5} {'abuf':>6} {'LUT':>9} {'FF':>9} {'DSP':>6} {'BRAM':>5} "
              f"{'util':>6} {'tok/s':>10}  bound")]
    for p in r["front"]:
        mark = "  <- chosen" if p == r["chosen"] else ""
        lines.append(f"{p['rows']:>5} {p['cols']:>5} {p['max_m']:>5} {p['act_buffer']:>6} {p['lut']:>9} {p['ff']:>9} "
                     f"{p['dsp']:>6} {p['bram']:>5} {p['utilization']:>6.2f} {p['tokens_per_second']:>10.3f}  "
                     f"{p['bound']}{mark}")
    lines.append(f"{r['evaluated']} configurations fit; resources are {r['resource_model']}")
    if r["generated"]:
        lines.append(f"generated the chosen design into {r['generated']}")
    return "\n".join(lines)
