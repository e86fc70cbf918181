"""write_board: a board's top level, pin constraints and expected results for one generated design.

The amaranth-boards platform only supplies what is board-specific: the pin
constraints (LPF), the clock and the reset glue of the top level. The
Verilog the platform writes is the board top alone; the accelerator stays
the design directory's own ``nmq_accel.v``, copied unchanged next to it.
A second Verilog of the same top, without the platform and with a fast
UART, is what :func:`~.sim.simulate_board` runs.

Files in ``out_dir``: ``nmq_board.v`` and ``nmq_accel.v`` (synthesis reads
both, top ``nmq_board``), ``nmq_board.lpf``, the platform's own build
scripts (``nmq_board.ys``, ``build_nmq_board.sh``, RTLIL), ``sim/
nmq_board_sim.v``, ``expected.npy`` (int32 partial sums ``[tokens, out,
groups]``), ``expected_words.npy`` (the result beats as 32-bit words),
``activations.npy`` (int8), ``board.json`` and ``README.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..config import AcceleratorConfig, HardwareError, read_json
from ..rtl.generate import VERILOG as ACCEL_VERILOG
from .layer import (
    BUILTIN,
    DEFAULT_INPUTS,
    DEFAULT_ROWS,
    DEFAULT_TOKENS,
    BoardImage,
    board_image,
    builtin_layer,
    checkpoint_layer,
    result_words,
    slice_tensor,
)
from .top import BoardTop

TOP = "nmq_board"
SIM_TOP = "nmq_board_sim"
BAUD = 115200
SIM_DIVISOR = 4
BOARD_FILE = "board.json"
# Lattice's package codes as nextpnr-ecp5's --package spells them.
PACKAGES = {"BG256": "CABGA256", "MG285": "CSFBGA285", "BG381": "CABGA381", "BG554": "CABGA554", "BG756": "CABGA756"}


def _ulx3s(device: str):
    def platform():
        from amaranth_boards import ulx3s

        return getattr(ulx3s, f"ULX3S_{device}_Platform")()
    return platform


# name: (platform factory, device as the implementation flow names it, DP16KD blocks of the device)
BOARDS = {
    "ulx3s-85f": (_ulx3s("85F"), "ecp5-85f", 208),
    "ulx3s-45f": (_ulx3s("45F"), "ecp5-45f", 108),
}


@dataclass
class BoardBuild:
    """What :func:`write_board` wrote, with everything place and route needs to know."""

    verilog: list[Path]          # every Verilog file synthesis reads (nmq_accel.v included)
    top: str
    lpf: Path
    device: str                  # "ecp5-85f", "ecp5-45f"
    package: str                 # as nextpnr spells it, e.g. "CABGA381"
    speed: int
    clock_mhz: float             # the board oscillator
    layer: str
    tokens: int
    beats: int                   # result beats the self-check compares
    expected_cycles: int         # the cycle model's compute cycles of the run
    files: dict[str, Path] = field(default_factory=dict)
    board: str = ""
    shape: tuple[int, int] = (0, 0)   # the checked slice [out, in]
    rom_bits: int = 0
    rom_blocks: int = 0          # DP16KD blocks the ROMs need
    sim_divisor: int = SIM_DIVISOR
    timeout_cycles: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verilog"] = [str(p) for p in self.verilog]
        d["lpf"] = str(self.lpf)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def load(cls, out_dir: str | Path) -> BoardBuild:
        """The build recorded in ``out_dir/board.json``."""
        path = Path(out_dir) / BOARD_FILE
        d = read_json(path, "no board build; accepted a directory written by write_board")
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["verilog"] = [Path(p) for p in d["verilog"]]
        d["lpf"] = Path(d["lpf"])
        d["files"] = {k: Path(v) for k, v in d["files"].items()}
        d["shape"] = tuple(d["shape"])
        return cls(**d)


def board_platform(board: str):
    """A fresh amaranth-boards platform object of ``board`` (each build prepares its own)."""
    if board not in BOARDS:
        raise HardwareError(f"board {board!r} is unknown; accepted: {', '.join(BOARDS)}")
    try:
        return BOARDS[board][0]()
    except ImportError:
        raise HardwareError("amaranth-boards is not installed; pip install amaranth-boards") from None


def load_design(design_dir: str | Path) -> tuple[AcceleratorConfig, Path]:
    d = Path(design_dir)
    cfg = AcceleratorConfig.load(d)
    verilog = d / ACCEL_VERILOG
    if not verilog.is_file():
        raise HardwareError(f"{d}: no {ACCEL_VERILOG}; accepted a directory written by 'nmq hw generate'")
    return cfg, verilog


def board_layer(cfg: AcceleratorConfig, checkpoint, layer, tokens, seed: int, rows: int, inputs: int,
                corrupt=()) -> BoardImage:
    """The image of the layer a board checks: the built-in model's, or a checkpoint's, cut to ``rows x inputs``."""
    name, t = checkpoint_layer(checkpoint, layer) if checkpoint is not None else builtin_layer(layer)
    t = slice_tensor(t, rows, inputs)
    return board_image(cfg, name, t, DEFAULT_TOKENS if tokens is None else tokens, seed,
                       tuple(sorted(set(corrupt))))


def write_board(design_dir: str | Path, board: str, out_dir: str | Path, checkpoint: str | Path | None = None,
                layer: str | None = None, tokens: int | None = None, seed: int = 0, *,
                rows: int = DEFAULT_ROWS, inputs: int = DEFAULT_INPUTS, corrupt: tuple[int, ...] = (),
                sim_divisor: int = SIM_DIVISOR) -> BoardBuild:
    """Write the board top of the design in ``design_dir`` for ``board`` into ``out_dir``.

    ``checkpoint``/``layer``: the layer to check (default: a 2:4 INT4 layer of
    the built-in tiny-llama); it is cut to ``rows`` output rows and the whole
    quantization groups within ``inputs`` columns; ``tokens`` seeded random
    tokens (``seed``). ``corrupt``: indices of expected result beats to flip
    on purpose, so the self-check must report that many mismatches.
    """
    platform = board_platform(board)
    cfg, accel_verilog = load_design(design_dir)
    image = board_layer(cfg, checkpoint, layer, tokens, seed, rows, inputs, corrupt)
    _, device, blocks = BOARDS[board]
    if image.rom_blocks() > blocks // 2:
        raise HardwareError(f"the board's ROMs need {image.rom_blocks()} DP16KD blocks, more than half of the "
                            f"{blocks} of the {device}; accepted a smaller slice (rows, inputs or tokens)")
    # Absolute paths: the implementation flow runs its tools from other directories.
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise HardwareError(f"{out}: exists and is not a directory; accepted a new or existing directory")
    (out / "sim").mkdir(parents=True, exist_ok=True)

    clock_hz = platform.default_clk_frequency
    accel_text = accel_verilog.read_text()
    platform.add_file(ACCEL_VERILOG, accel_text)
    top = BoardTop(image, divisor=round(clock_hz / BAUD), repeat_cycles=int(clock_hz),
                   heartbeat_cycles=int(clock_hz // 2))
    plan = platform.prepare(top, name=TOP, debug_verilog=True)
    for name, content in plan.files.items():
        if name == f"{TOP}.debug.v":
            name = f"{TOP}.v"
        path = out / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (out / f"build_{TOP}.sh").chmod(0o755)

    sim_top = BoardTop(image, divisor=sim_divisor, repeat_cycles=0, heartbeat_cycles=16,
                       timeout_cycles=top.timeout_cycles)
    sim_verilog = out / "sim" / f"{SIM_TOP}.v"
    sim_verilog.write_text(_convert(sim_top, SIM_TOP))

    np.save(out / "expected.npy", image.expected_sums.numpy())
    np.save(out / "expected_words.npy", result_words(image.expected_sums, image.streams))
    np.save(out / "activations.npy", image.q.numpy())
    t = image.tensor
    build = BoardBuild(
        verilog=[out / f"{TOP}.v", out / ACCEL_VERILOG], top=TOP, lpf=out / f"{TOP}.lpf", device=device,
        package=PACKAGES[platform.package], speed=int(platform.speed), clock_mhz=clock_hz / 1e6,
        layer=image.layer, tokens=image.tokens, beats=len(image.expected), expected_cycles=image.model_cycles,
        files={"sim_verilog": sim_verilog, "accel_verilog": out / ACCEL_VERILOG, "expected": out / "expected.npy",
               "expected_words": out / "expected_words.npy", "activations": out / "activations.npy",
               "yosys_script": out / f"{TOP}.ys", "build_script": out / f"build_{TOP}.sh",
               "readme": out / "README.md", "record": out / BOARD_FILE},
        board=board, shape=(t.out_features, t.in_features), rom_bits=image.rom_bits(),
        rom_blocks=image.rom_blocks(), sim_divisor=sim_divisor, timeout_cycles=top.timeout_cycles)
    record = build.to_dict()
    record.update(source=str(checkpoint) if checkpoint is not None else BUILTIN, seed=seed,
                  pattern=str(t.pattern), bits=t.bits, group=t.group, corrupt=list(image.corrupt),
                  design=str(Path(design_dir).resolve()), config=cfg.to_dict(), baud=BAUD,
                  accel_sha256=hashlib.sha256(accel_text.encode()).hexdigest())
    (out / BOARD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(readme(build, record))
    return build


def _convert(top: BoardTop, name: str) -> str:
    from amaranth.back import verilog

    return verilog.convert(top, name=name, emit_src=False)


def readme(b: BoardBuild, record: dict) -> str:
    src = record["source"]
    return f"""# {b.top}: self-checking nmq accelerator on {b.board} ({b.device}, {b.package}, speed {b.speed})

Layer `{b.layer}` of `{src}` ({record['pattern']}, {record['bits']}-bit, groups of {record['group']}), cut to
{b.shape[0]} x {b.shape[1]}, on {b.tokens} seeded random int8 tokens (seed {record['seed']}): {b.beats} result beats are
compared with `expected_words.npy`; the cycle model expects {b.expected_cycles} cycles at {b.clock_mhz:g} MHz.

Synthesis reads {', '.join(p.name for p in b.verilog)} (top `{b.top}`), place and route uses `{b.lpf.name}`;
`build_{b.top}.sh` runs yosys, nextpnr-ecp5 and ecppack as the amaranth-boards platform would.
On the board: LED 0 PASS, 1 FAIL, 2 finished, 3 heartbeat, 4 running, 5 watchdog, 6 accelerator error,
7 UART activity; the FTDI UART ({BAUD} baud, 8N1) repeats a line every second, e.g.
`nmq PASS {b.beats}/{b.beats} cycles={b.expected_cycles}`.
"""
