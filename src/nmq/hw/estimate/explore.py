"""Design-space exploration: sweep array shapes under a device budget, Pareto front, generate the pick.

Throughput comes from the cycle model (``cycle_model.model_estimate``: every
compressed linear layer of the model, compute and off-chip bandwidth bound).
Resources come from :func:`estimate_resources` for UltraScale+ budgets:
flip-flops counted from the RTL's structure, DSPs one per PE (Yosys maps
each PE's multiplier to a DSP48E2) plus one, LUTs from a per-PE cost fitted
to Yosys runs of generated designs (``CALIBRATION``), BRAM from the
activation buffer's shape (36 Kb blocks of 512 x 72); and from
``ecp5.estimate_ecp5`` for Lattice ECP5 devices (LUT4, TRELLIS_FF,
MULT18X18D, DP16KD, fitted to ``synth_ecp5`` runs). Every shape is tried
without and with an activation buffer deep enough for the model's widest
layer. The estimate is for ranking; run ``nmq hw synth`` on the chosen
design for its real counts.

Each candidate runs at the clock ``clocks.clock_for`` gives it on the
budget's device: measured where that design was placed and routed there,
else estimated from the device's measured designs, else assumed; every
point says which. Each point also carries its energy per token
(``energy.token_energy``, an estimate).
"""

from __future__ import annotations

from dataclasses import replace

from ..config import AcceleratorConfig, HardwareError
from . import ecp5, energy
from .clocks import clock_for
from .cycle_model import layer_cycles, model_estimate, model_layers
from .structure import delay_lines, structural_ffs

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
# from `nmq hw synth` (Yosys 0.23, synth_xilinx -family xcup) of these designs
# (the RTL of the three-stage PE and the registered array enable):
CALIBRATION = [
    # rows, cols, max_m, weight_bits: Yosys LUT (of which SRL), FF, DSP
    {"config": (2, 2, 8, 4), "lut": 879, "srl": 5, "ff": 1158, "dsp": 4},
    {"config": (4, 4, 8, 4), "lut": 2628, "srl": 149, "ff": 3582, "dsp": 16},
    {"config": (8, 4, 16, 8), "lut": 5698, "srl": 407, "ff": 9168, "dsp": 32},
    {"config": (8, 8, 8, 4), "lut": 9151, "srl": 565, "ff": 12754, "dsp": 64},
]
# Held out of the fit, to check it: the default 16 x 16 array.
VALIDATION = [
    {"config": (16, 16, 8, 4), "lut": 33924, "srl": 1397, "ff": 49435, "dsp": 256},
]
LUT_PER_PE = 103.2
LUT_PER_PE_PER_M = 3.12
LUT_FIXED = 391.2
FF_SCALE = 0.983


ULTRASCALE = {"family": "ultrascale+", "memory": "ddr4", "assumed_clock_mhz": 300.0}


def parse_budget(text: str) -> dict:
    """``"LUT,FF,DSP,BRAM"``, a board name or an ECP5 device to a budget dict."""
    key = text.strip().lower()
    if key in BOARDS:
        return {"name": key, **ULTRASCALE, **BOARDS[key]}
    if ecp5.device_for(key):
        return parse_device(key)
    try:
        values = [float(v) for v in key.split(",")]
        if len(values) != 4 or any(v <= 0 for v in values):
            raise ValueError
    except ValueError:
        raise HardwareError(f"--budget {text!r}: accepted four positive numbers LUT,FF,DSP,BRAM, "
                            f"a board: {', '.join(BOARDS)}, or a device: {', '.join(ecp5.DEVICES)}") from None
    return {"name": "custom", **ULTRASCALE, **dict(zip(RESOURCES, values))}


def parse_device(text: str) -> dict:
    """An ECP5 device (``ecp5-85f``, its part ``LFE5U-85F`` or nextpnr size ``85k``) to a budget dict."""
    dev = ecp5.device_for(text)
    if dev is None:
        raise HardwareError(f"--device {text!r}: accepted {', '.join(ecp5.DEVICES)} "
                            f"(or their parts, e.g. LFE5U-85F)")
    return {"name": dev, **{k: v for k, v in ecp5.DEVICES[dev].items() if k != "aliases"}}


def budget_resources(budget: dict, cfg: AcceleratorConfig) -> dict:
    """The estimate in the budget's own units: ECP5 cells for an ECP5 device, UltraScale+ cells otherwise."""
    return ecp5.estimate_ecp5(cfg) if budget.get("family") == "ecp5" else estimate_resources(cfg)


def clock_devices(budget: dict) -> tuple[str, ...]:
    """The names measured clocks of this budget's device may be recorded under (none for a custom budget)."""
    if budget.get("name") in ecp5.DEVICES:
        return ecp5.DEVICES[budget["name"]]["aliases"]
    if budget.get("name") in BOARDS:
        return (budget["name"], BOARDS[budget["name"]]["part"])
    return ()


def stored_weight_bytes(model: str, pattern: tuple[int, int], bits: int, group: int) -> int:
    """Bytes of the model's compressed linear weights (codes, metadata, scales) as streamed once."""
    cfg = AcceleratorConfig(rows=1, cols=1)
    total = 0
    for _, out, k, count in model_layers(model):
        g = k if group == -1 else group
        total += layer_cycles(cfg, out, -(-k // g) * g, 1, *pattern, g, bits).weight_bytes * count
    return total


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
        "dsp": pes,
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
            group: int = 128, tokens: int = 1, clock_mhz: float | None = None, bandwidth_gbs: float | None = None,
            output: str | None = None) -> dict:
    """The Pareto front of the configurations that fit ``budget``; ``clock_mhz`` is the clock assumed where
    nothing was measured (default: the budget's, 300 MHz for UltraScale+), ``bandwidth_gbs`` the budget's."""
    bw = bandwidth_gbs if bandwidth_gbs is not None else budget.get("bandwidth_gbs", 19.2)
    assumed = clock_mhz if clock_mhz is not None else budget.get("assumed_clock_mhz", 300.0)
    devices = clock_devices(budget)
    plat = energy.platform(budget)

    widest = max(k for _, _, k, _ in model_layers(model))
    windows = -(-widest // (group if group > 0 else pattern[1])) * (group if group > 0 else pattern[1]) // pattern[1]
    points = []
    seen = set()
    for cfg in candidates(pattern[1], bits, assumed, bw, -(-windows // 512) * 512):
        if cfg in seen:
            continue
        seen.add(cfg)
        res = budget_resources(budget, cfg)
        if any(res[r] > budget[r] for r in RESOURCES):
            continue
        clock = clock_for(cfg, devices, assumed)
        cfg = replace(cfg, clock_mhz=clock.mhz)
        est = model_estimate(cfg, model, pattern, bits, group, tokens)
        joules = energy.token_energy(cfg, plat, model, pattern, bits, group, tokens)
        util = max(res[r] / budget[r] for r in RESOURCES if budget[r])
        points.append({
            "rows": cfg.rows, "cols": cfg.cols, "max_m": cfg.max_m, "weight_bits": cfg.weight_bits,
            "act_buffer": cfg.act_buffer_depth, **res,
            "utilization": round(util, 4), "tokens_per_second": est["tokens_per_second"],
            "cycles_per_step": est["cycles"], "compute_cycles_per_step": est["compute_cycles"],
            "bound": "compute" if est["cycles"] == est["compute_cycles"] else "bandwidth",
            **clock.to_dict(), "energy_j_per_token": joules["joules_per_token"],
            "config": cfg.to_dict(),
        })
    if not points:
        smallest = budget_resources(budget, AcceleratorConfig(rows=4, cols=1))
        raise HardwareError(f"no array configuration fits the budget {budget}; accepted a budget of at least "
                            f"{smallest}")
    front = pareto(points)
    best = max(front, key=lambda p: (round(p["tokens_per_second"], 6), -p["utilization"]))
    # Among designs within 1% of the best throughput, the cheapest.
    chosen = min((p for p in front if p["tokens_per_second"] >= 0.99 * best["tokens_per_second"]),
                 key=lambda p: p["utilization"])
    chosen_cfg = AcceleratorConfig.from_dict(chosen["config"])
    weights = stored_weight_bytes(model, pattern, bits, group)
    notes = []
    if budget.get("memory_mb") and weights > budget["memory_mb"] * 2**20:
        notes.append(f"the board's {budget['memory_mb']} MB memory cannot hold {model}'s compressed weights "
                     f"({weights / 1e9:.2f} GB); the figures assume they stream at {bw:g} GB/s")
    result = {
        "budget": budget, "model": model, "pattern": f"{pattern[0]}:{pattern[1]}", "bits": bits, "group": group,
        "batch": tokens, "clock_mhz": chosen["clock_mhz"], "clock_kind": chosen["clock_kind"],
        "clock_source": chosen["clock_source"], "assumed_clock_mhz": assumed, "bandwidth_gbs": bw,
        "bandwidth_source": budget.get("bandwidth_source", "assumed") if bandwidth_gbs is None else "assumed (given)",
        "evaluated": len(points), "front": front, "chosen": chosen, "generated": None,
        "resource_model": (f"estimate (ECP5 cells: FF structural, multipliers in {ecp5.MULTIPLIERS}s, LUT4 fitted "
                           f"to {ecp5.YOSYS_ECP5})" if budget.get("family") == "ecp5" else
                           "estimate (FF structural, DSP one per PE, LUT fitted to Yosys); run 'nmq hw synth' for counts"),
        "energy": {**energy.token_energy(chosen_cfg, plat, model, pattern, bits, group, tokens),
                   "constants": energy.constants_used(plat)},
        "weight_bytes": weights, "notes": notes,
    }
    if output:
        from ..rtl.generate import generate

        info = generate(chosen_cfg, output)
        result["generated"] = info["dir"]
    return result


def _units(r: dict) -> dict:
    return r["budget"].get("units") or {"lut": "LUT", "ff": "FF", "dsp": "DSP", "bram": "BRAM"}


def format_front(r: dict) -> str:
    b, u = r["budget"], _units(r)
    lines = [(f"{r['model']} {r['pattern']} {r['bits']}-bit, batch {r['batch']}, {r['bandwidth_gbs']:g} GB/s "
              f"({r['bandwidth_source']}); budget {b['name']}: "
              + ", ".join(f"{u[k]} {b[k]:g}" for k in RESOURCES)),
             (f"{'rows':>5} {'cols':>5} {'maxM':>5} {'abuf':>6} {'LUT':>9} {'FF':>9} {'DSP':>6} {'BRAM':>5} "
              f"{'util':>6} {'tok/s':>10} {'MHz':>7} {'clock':>8} {'J/token':>8}  bound")]
    for p in r["front"]:
        mark = "  <- chosen" if p == r["chosen"] else ""
        kind = {"nearest measured": "nearest"}.get(p["clock_kind"], p["clock_kind"])
        lines.append(f"{p['rows']:>5} {p['cols']:>5} {p['max_m']:>5} {p['act_buffer']:>6} {p['lut']:>9} {p['ff']:>9} "
                     f"{p['dsp']:>6} {p['bram']:>5} {p['utilization']:>6.2f} {p['tokens_per_second']:>10.3f} "
                     f"{p['clock_mhz']:>7.1f} {kind:>8} {p['energy_j_per_token']:>8.3f}  {p['bound']}{mark}")
    c = r["chosen"]
    lines.append(f"chosen: {AcceleratorConfig.from_dict(c['config']).name} at {c['clock_mhz']:g} MHz, "
                 f"{c['clock_source']}")
    others = sorted({p["clock_source"] for p in r["front"]} - {c["clock_source"]})
    lines += [f"  other clocks: {s}" for s in others]
    e = r["energy"]["joules"]
    lines.append(f"energy per token of the chosen design (estimate): {energy.format_joules(r['energy']['joules_per_token'])}"
                 f" = off-chip {energy.format_joules(e['offchip'])} + MACs {energy.format_joules(e['mac'])} + on-chip "
                 f"{energy.format_joules(e['onchip'])} + static {energy.format_joules(e['static'])}; constants: "
                 "'nmq hw energy --help', docs/hardware.md")
    lines.append(f"{r['evaluated']} configurations fit; resources are {r['resource_model']}")
    lines += [f"note: {n}" for n in r["notes"]]
    if r["generated"]:
        lines.append(f"generated the chosen design into {r['generated']}")
    return "\n".join(lines)


def pattern_label(pattern: tuple[int, int]) -> str:
    n, m = pattern
    return f"dense ({n}:{m})" if n == m else f"{n}:{m}"


def energy_report(budget: dict, model: str = "llama-7b",
                  patterns: list[tuple[int, int]] | tuple = ((4, 4), (2, 4), (4, 8), (1, 4)),
                  design: AcceleratorConfig | None = None, bits: int = 4, group: int = 128, tokens: int = 1,
                  clock_mhz: float | None = None, bandwidth_gbs: float | None = None) -> dict:
    """Energy per token of one design for each pattern; the design defaults to the explorer's pick for the widest M."""
    bw = bandwidth_gbs if bandwidth_gbs is not None else budget.get("bandwidth_gbs", 19.2)
    assumed = clock_mhz if clock_mhz is not None else budget.get("assumed_clock_mhz", 300.0)
    if design is None:
        widest = max(patterns, key=lambda p: (p[1], -p[0]))
        picked = explore(budget, model, widest, bits, group, tokens, assumed, bandwidth_gbs)
        design = AcceleratorConfig.from_dict(picked["chosen"]["config"])
    too_wide = [pattern_label(p) for p in patterns if p[1] > design.max_m]
    if too_wide:
        raise HardwareError(f"patterns {', '.join(too_wide)}: M exceeds the design's max M {design.max_m}; accepted "
                            f"patterns with M <= {design.max_m}, or a design generated with a larger --max-m")
    notes = []
    # One bitstream runs every pattern; its buffer must hold a pass of the narrowest M, else those re-stream.
    need = -(-max(-(-k // group) * group // min(m for _, m in patterns) for _, _, k, _ in model_layers(model))
             // 512) * 512
    if 0 < design.act_buffer_depth < need:
        deeper = replace(design, act_buffer_depth=need)
        if all(v <= budget[k] for k, v in budget_resources(budget, deeper).items()):
            notes.append(f"activation buffer deepened from {design.act_buffer_depth} to {need} windows so that "
                         f"every pattern replays its activations")
            design = deeper
    clock = clock_for(design, clock_devices(budget), assumed)
    cfg = replace(design, clock_mhz=clock.mhz, bandwidth_gbs=bw)
    plat = energy.platform(budget)
    rows = []
    for p in patterns:
        e = energy.token_energy(cfg, plat, model, p, bits, group, tokens)
        rows.append({"pattern": pattern_label(p), "ms_per_token": 1e3 * e["seconds_per_step"] / e["tokens"],
                     "offchip_bytes": e["offchip_bytes"], "macs": e["macs"], "onchip_bytes": e["onchip_bytes"],
                     "joules": e["joules"], "joules_per_token": e["joules_per_token"]})
    return {"model": model, "batch": tokens, "bits": bits, "group": group, "budget": budget["name"],
            "design": cfg.name, "config": cfg.to_dict(), **clock.to_dict(), "bandwidth_gbs": bw,
            "bandwidth_source": budget.get("bandwidth_source", "assumed") if bandwidth_gbs is None else "assumed (given)",
            "patterns": rows, "constants": energy.constants_used(plat), "notes": notes,
            "estimate": "every energy figure is an estimate from cited per-operation constants, not a measurement"}


def format_energy(r: dict) -> str:
    j = energy.format_joules
    lines = [(f"{r['model']} decode (batch {r['batch']}), {r['bits']}-bit weights, group {r['group']}, on "
              f"{r['design']} ({r['budget']}) at {r['clock_mhz']:g} MHz ({r['clock_source']}), "
              f"{r['bandwidth_gbs']:g} GB/s ({r['bandwidth_source']})"),
             (f"{'pattern':<12} {'ms/token':>10} {'off-chip MB':>12} {'GMAC':>7} {'off-chip':>10} {'MACs':>9} "
              f"{'on-chip':>9} {'static':>9} {'per token':>10}")]
    for p in r["patterns"]:
        e = p["joules"]
        lines.append(f"{p['pattern']:<12} {p['ms_per_token']:>10.1f} {p['offchip_bytes'] / 1e6:>12.1f} "
                     f"{p['macs'] / 1e9:>7.2f} {j(e['offchip']):>10} {j(e['mac']):>9} {j(e['onchip']):>9} "
                     f"{j(e['static']):>9} {j(p['joules_per_token']):>10}")
    lines += [f"note: {n}" for n in r["notes"]]
    lines.append("constants (estimates):")
    lines += [f"  {k} = {c['value']:g}: {c['source']}" for k, c in r["constants"].items()]
    if "cpu" in r:
        cpu = r["cpu"]
        lines.append("CPU (measured): " + (f"{j(cpu['joules_per_token'])} per token, {cpu['status']}"
                                           if cpu["joules_per_token"] is not None else cpu["status"]))
    lines.append(r["estimate"])
    return "\n".join(lines)
