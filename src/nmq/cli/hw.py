"""``nmq hw generate | simulate | board | synth | implement | explore | energy``: the FPGA accelerator.

Wired into ``nmq`` by :func:`add_parser` (called from ``cli/main.py``'s
``build_parser``).
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time

from ..progress import say
from .common import chatty

EXAMPLES = {
    "generate": """
        examples:
          nmq hw generate --rows 16 --cols 16 --max-m 8 --weight-bits 4 -o hw/r16c16
          nmq hw generate --rows 8 --cols 4 --max-m 16 --weight-bits 8 -o hw/r8c4 --json
          nmq hw generate --rows 64 --cols 1 --act-buffer 4096 -o hw/decode
    """,
    "simulate": """
        examples:
          nmq hw simulate hw/r16c16 --shape 4096x4096 --pattern 2:4 --bits 4 --batch 1 --json
          nmq hw simulate hw/r16c16 --checkpoint ckpt/tiny-2of4 --layer model.layers.0.mlp.up_proj --batch 16
    """,
    "board": """
        examples:
          nmq hw board hw/r8c8                              # tiny-llama 2:4 layer, ulx3s-85f, Verilator
          nmq hw board hw/r8c8 --checkpoint ckpt/tiny-2of4 --layer model.layers.0.mlp.up_proj -o hw/r8c8-board

        Writes the board top (the design, ROMs holding a slice of the layer, its
        activations and the expected partial sums, a self-check driving the LEDs
        and a UART line) into OUT (default DIR/board), then runs that top in
        Verilator and prints the UART line. Exit 1 on FAIL. 'nmq hw implement
        DIR --board NAME' places and routes the same build and writes a .bit.
    """,
    "synth": """
        examples:
          nmq hw synth hw/r8c4 --json
    """,
    "implement": """
        examples:
          nmq hw implement hw/r4c4                          # ECP5-85F, 100 MHz target, seed 1
          nmq hw implement hw/r4c4 --device ecp5-45f --clock 50 --seed 2 --json
          nmq hw implement hw/r4c4 --board ulx3s-85f        # board pins, oscillator clock, a .bit

        Without --board the design is placed inside a timing wrapper (its ports
        exceed the package's pins): every input bit driven by its own flip-flop,
        the outputs XOR-folded into one pin, clk and rst on pins. Writes
        DIR/ecp5/ (netlist, logs, nextpnr report) and DIR/implement.json, and
        records the Fmax in the clock store the explorer reads. A 2x2 array
        takes under a minute, a 4x4 one about 1.5 minutes, an 8x8 one about
        8 minutes (nextpnr runs on one core).
    """,
    "explore": """
        examples:
          nmq hw explore --budget zcu104 --model llama-7b
          nmq hw explore --device ecp5-85f --model llama-7b --json
          nmq hw explore --budget 230000,460000,1728,312 --pattern 2:4 -o hw/best --json

        Each point runs at the clock measured by 'nmq hw implement' for that
        design on that device, else the lowest measured Fmax of the device's
        designs with the same max M and weight width ("nearest measured"),
        else --clock-mhz ("assumed"; UltraScale+ clocks always are). The
        J/token column is an energy estimate (see 'nmq hw energy --help').
    """,
    "energy": """
        examples:
          nmq hw energy --model llama-7b --device ecp5-85f
          nmq hw energy --model llama-7b --budget zcu104 --json
          nmq hw energy --design hw/r16c16 --device ecp5-85f --patterns dense,2:4

        energy = off-chip bytes x pJ/byte + MACs x pJ/MAC + on-chip bytes x pJ/byte
                 + static power x time, every figure an estimate with its source:
          MAC: (0.2 pJ 8-bit multiply + 0.1 pJ 32-bit add, Horowitz ISSCC 2014, 45 nm)
               x 14 (FPGA/ASIC dynamic power, Kuon & Rose 2007, 90 nm)
          on-chip: 10 pJ per 64-bit access of an 8 KB SRAM (Horowitz) / 8 x 14
          off-chip: DDR4/LPDDR4 boards 14 pJ/bit; ECP5 boards' SDR SDRAM 1.3-2.6 nJ
               per 64-bit access (Horowitz, midpoint)
          static: UltraScale+ scaled per LUT from Xilinx's ZU19EG-vs-ZU2EG static
               difference; ECP5 assumed (0.1 W on the 85F)
        Time comes from the cycle model at the design's clock (measured where the
        design was placed and routed). The design is --design DIR, else the one
        'nmq hw explore' chooses for the budget at M = 8 (it runs every pattern
        listed). The CPU line is measured with RAPL counters where the machine
        has them (--cpu-tokens N decodes N tokens of --model), else says why not.
    """,
}


def add_parser(subparsers, common_parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``nmq hw ...`` to the top-level subparsers; returns the ``hw`` parser."""
    hw = subparsers.add_parser(
        "hw", parents=[common_parent], help="Generate, simulate, synthesize and explore the FPGA accelerator.",
        description="The N:M zero-skipping systolic-array accelerator: Verilog generation, Verilator "
                    "simulation bit-exact with the reference, Yosys synthesis, design-space exploration.",
        epilog="Run 'nmq hw COMMAND --help' for a command's options and examples.",
    )
    sub = hw.add_subparsers(dest="hw_command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common_parent], help=help_text, description=help_text,
                              epilog=textwrap.dedent(EXAMPLES[name]),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("generate", "Emit the accelerator's Verilog, its config as JSON and a README of its ports.")
    _config_options(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--no-lint", action="store_true", help="skip 'verilator --lint-only'")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_generate)

    p = add("simulate", "Run a layer through the generated RTL (Verilator) and compare with the reference bit for bit.")
    p.add_argument("design", metavar="DIR", help="a directory written by 'nmq hw generate'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", metavar="OUTxIN", help="a random weight of this shape, e.g. 4096x4096")
    src.add_argument("--checkpoint", metavar="CKPT", help="an nmq checkpoint directory (with --layer)")
    p.add_argument("--layer", metavar="NAME", help="compressed layer of --checkpoint, e.g. model.layers.0.mlp.up_proj")
    p.add_argument("--pattern", default="2:4", help="N:M pattern of the random weight (default 2:4)")
    p.add_argument("--bits", type=int, default=4, help="weight bits of the random weight: 4 or 8 (default 4)")
    p.add_argument("--group-size", type=int, default=128, help="quantization group of the random weight (default 128)")
    p.add_argument("--batch", type=int, default=1, help="tokens (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weight and activations (default 0)")
    p.add_argument("--backend", default="verilator", choices=["verilator", "amaranth"],
                   help="RTL simulator (default verilator; amaranth for tiny arrays)")
    p.add_argument("--json", action="store_true",
                   help='print {"cycles", "model_cycles", "bit_exact", "seconds", "pattern", "shape", "batch", ...}')
    p.set_defaults(func=cmd_simulate)

    p = add("board", "Build the self-checking board top of a generated design (one compressed layer in ROMs) "
                     "and run its check in Verilator.")
    p.add_argument("design", metavar="DIR", help="a directory written by 'nmq hw generate'")
    p.add_argument("--board", default="ulx3s-85f", help="the board (default ulx3s-85f)")
    p.add_argument("--checkpoint", metavar="CKPT", help="an nmq checkpoint (default: tiny-llama, 2:4 INT4 magnitude)")
    p.add_argument("--layer", metavar="NAME", help="the compressed layer of the checkpoint")
    p.add_argument("-o", "--output", metavar="OUT", help="where the build goes (default DIR/board)")
    p.add_argument("--json", action="store_true", help='print {"pass", "mismatches", "beats", "cycles", "uart", ...}')
    p.set_defaults(func=cmd_board)

    p = add("synth", "Synthesize the generated design with Yosys for Xilinx UltraScale+ and count LUT, FF, DSP, BRAM.")
    p.add_argument("design", metavar="DIR", help="a directory written by 'nmq hw generate'")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds")
    p.add_argument("--json", action="store_true", help='print {"lut", "ff", "dsp", "bram", "yosys_version", "flags", ...}')
    p.set_defaults(func=cmd_synth)

    p = add("implement", "Place and route the generated design on a Lattice ECP5 (Yosys, nextpnr-ecp5): "
                         "Fmax against a target clock, critical path, utilization.")
    p.add_argument("design", metavar="DIR", help="a directory written by 'nmq hw generate'")
    p.add_argument("--device", metavar="DEVICE",
                   help="ecp5-25f, ecp5-45f or ecp5-85f (default ecp5-85f; with --board the board's)")
    p.add_argument("--board", metavar="NAME", help="implement on a board (e.g. ulx3s-85f): its pins and clock, "
                                                   "and write a bitstream")
    p.add_argument("--checkpoint", metavar="CKPT", help="with --board: an nmq checkpoint whose --layer the board build holds")
    p.add_argument("--layer", metavar="NAME", help="with --board and --checkpoint: the compressed layer")
    p.add_argument("--clock", type=float, default=None, metavar="MHZ",
                   help="target clock (default 100 MHz; with --board the board oscillator)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    p.add_argument("--multipliers", choices=("lut", "dsp"), default="lut",
                   help="map the PE multipliers to LUTs (default; synth_ecp5 -nodsp) or to MULT18X18D blocks "
                        "(slower on ECP5, at most one PE per block); a dsp run's clock is recorded for DEVICE+dsp")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds (whole flow)")
    p.add_argument("--json", action="store_true",
                   help='print {"routed", "fmax", "timing_met", "critical_path", "utilization", "cells", '
                        '"wrapper_ffs", "tools", "commands", "seconds", ...}')
    p.set_defaults(func=cmd_implement)

    p = add("explore", "Sweep array configurations under a device budget; print the Pareto front; generate the chosen one.")
    _budget_options(p)
    p.add_argument("--pattern", default="2:4", help="N:M pattern of the compressed model (default 2:4)")
    p.add_argument("--bits", type=int, default=4, help="weight bits (default 4)")
    p.add_argument("--group-size", type=int, default=128, help="quantization group (default 128)")
    p.add_argument("--batch", type=int, default=1, help="tokens per forward step (default 1: decode)")
    p.add_argument("--list-boards", action="store_true", help="print the named budgets and ECP5 devices and exit")
    p.add_argument("-o", "--output", metavar="DIR", help="generate the chosen design into DIR")
    p.add_argument("--json", action="store_true", help='print {"budget", "front", "chosen", ...}')
    p.set_defaults(func=cmd_explore)

    p = add("energy", "Estimate the accelerator's energy per token per N:M pattern (off-chip, MACs, on-chip, static).")
    _budget_options(p)
    p.add_argument("--design", metavar="DIR", help="a directory written by 'nmq hw generate' (default: the "
                                                   "explorer's pick for the budget at M = 8)")
    p.add_argument("--patterns", default="dense,2:4,4:8,1:4", help="comma-separated (default dense,2:4,4:8,1:4)")
    p.add_argument("--cpu-tokens", type=int, default=0, metavar="N",
                   help="also decode N tokens of --model on the CPU (nmq 2:4 INT4) and measure its joules "
                        "with RAPL (default 0: only say whether the counters exist)")
    p.add_argument("--json", action="store_true", help='print {"design", "clock_source", "patterns", "constants", '
                                                       '"cpu", ...}')
    p.set_defaults(func=cmd_energy)
    return hw


def _budget_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--budget", default=None, metavar="LUT,FF,DSP,BRAM|BOARD",
                       help="resource budget as four numbers, or a board name (default zcu104; see --list-boards)")
    where.add_argument("--device", metavar="ECP5",
                       help="a Lattice ECP5 device as the budget: ecp5-25f, ecp5-45f or ecp5-85f (ECP5 cells, "
                            "measured clocks, a ULX3S-like board's SDRAM bandwidth)")
    p.add_argument("--model", default="llama-7b", help="model whose linear layers are estimated (default llama-7b)")
    p.add_argument("--clock-mhz", type=float, default=None,
                   help="clock assumed where none was measured (default: 300 for UltraScale+, 100 for ECP5)")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="off-chip bandwidth in GB/s (default: the board's, 19.2 for a custom budget, 0.2 for ECP5)")


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=16, help="array rows = output channels at once (default 16)")
    p.add_argument("--cols", type=int, default=16, help="array columns = tokens at once (default 16)")
    p.add_argument("--max-m", type=int, default=8, help="largest M of a runtime N:M pattern (default 8)")
    p.add_argument("--weight-bits", type=int, default=4, help="weight code width, 4 or 8 (default 4)")
    p.add_argument("--fifo-depth", type=int, default=8, help="result FIFO depth in beats (default 8)")
    p.add_argument("--act-buffer", type=int, default=0, metavar="WINDOWS",
                   help="on-chip activation buffer in M-windows, >= K/M of the layers to reuse activations "
                        "across row tiles (default 0: none)")
    p.add_argument("--clock-mhz", type=float, default=300.0, help="assumed clock for estimates (default 300)")
    p.add_argument("--bandwidth-gbs", type=float, default=19.2, help="assumed off-chip bandwidth in GB/s (default 19.2)")



def cmd_generate(args: argparse.Namespace) -> int:
    from ..hw.config import AcceleratorConfig
    from ..hw.rtl.generate import generate

    cfg = AcceleratorConfig(rows=args.rows, cols=args.cols, max_m=args.max_m, weight_bits=args.weight_bits,
                            result_fifo_depth=args.fifo_depth, act_buffer_depth=args.act_buffer,
                            clock_mhz=args.clock_mhz,
                            bandwidth_gbs=args.bandwidth_gbs)
    say(f"generating {cfg.name} into {args.output}", chatty(args))
    info = generate(cfg, args.output, lint=not args.no_lint)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        lint = info["lint"]
        verdict = "skipped" if lint is None else {True: "clean", False: "WARNINGS", None: lint["messages"]}[lint["clean"]]
        print(f"wrote {info['verilog']}, config.json, README.md ({cfg.rows}x{cfg.cols} PEs, max M {cfg.max_m}, "
              f"{cfg.weight_bits}-bit weights); verilator lint: {verdict}")
    return 0 if info["lint"] is None or info["lint"]["clean"] is not False else 1


def load_layer(ckpt: str, layer: str | None):
    """The compressed layer ``layer`` of checkpoint ``ckpt``."""
    from pathlib import Path

    from ..format.load import load_file
    from ..hw.config import HardwareError
    from ..models.checkpoint import read_record

    record = read_record(ckpt)
    names = list(record["compressed_layers"])
    if not layer:
        raise HardwareError(f"--checkpoint needs --layer NAME; accepted: {', '.join(names[:4])}, ...")
    key = layer[: -len(".weight")] if layer.endswith(".weight") else layer
    if key not in names:
        raise HardwareError(f"{ckpt}: no compressed layer {layer!r}; accepted: {', '.join(names[:6])}"
                            + (", ..." if len(names) > 6 else ""))
    return load_file(Path(ckpt) / record["tensors"]).compressed[key]


def cmd_simulate(args: argparse.Namespace) -> int:
    import torch

    from ..compress.weight import compress_weight
    from ..format.pattern import Pattern
    from ..hw.config import AcceleratorConfig, HardwareError
    from ..hw.sim.driver import simulate_layer
    from ..shapes import parse_shape

    if args.batch < 1:
        raise HardwareError(f"--batch {args.batch}: accepted a positive number of tokens")
    cfg = AcceleratorConfig.load(args.design)      # a bad DIR fails before any work
    gen = torch.Generator().manual_seed(args.seed)
    if args.checkpoint:
        t = load_layer(args.checkpoint, args.layer)
        source = f"{args.checkpoint}:{args.layer}"
    else:
        out, k = parse_shape(args.shape, error=HardwareError)
        if Pattern.parse(args.pattern).m > cfg.max_m:
            raise HardwareError(f"pattern {args.pattern}: M exceeds the design's max M {cfg.max_m}; accepted "
                                f"patterns with M <= {cfg.max_m}, or generate with a larger --max-m")
        say(f"compressing a random {out}x{k} weight to {args.pattern}, {args.bits} bit", chatty(args))
        t = compress_weight(torch.randn(out, k, generator=gen), pattern=args.pattern, bits=args.bits,
                            group_size=args.group_size)
        source = "random"
    x = torch.randn(args.batch, t.in_features, generator=gen)
    say(f"simulating {list(t.shape)} {t.pattern} x {args.batch} token(s) with {args.backend}", chatty(args))
    t0 = time.perf_counter()
    run = simulate_layer(args.design, t, x, backend=args.backend)
    total = time.perf_counter() - t0
    result = {
        "cycles": run.cycles,
        "model_cycles": run.model_cycles,
        "bit_exact": run.bit_exact,
        "seconds": round(run.seconds, 3),
        "pattern": str(t.pattern),
        "shape": list(t.shape),
        "batch": args.batch,
        "bits": t.bits,
        "group_size": t.group_size,
        "source": source,
        "backend": args.backend,
        "sim_seconds": round(run.sim_seconds, 3),
        "seconds_with_build": round(total, 3),
        "model_error": (run.model_cycles - run.cycles) / run.cycles,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{source} {result['shape']} {result['pattern']} {t.bits}-bit, batch {args.batch}: "
              f"{'bit-exact' if run.bit_exact else 'MISMATCH'} with the reference; "
              f"{run.cycles} cycles (model {run.model_cycles}, {100 * result['model_error']:+.2f}%), "
              f"{run.seconds:.1f} s")
    return 0 if run.bit_exact else 1


def cmd_synth(args: argparse.Namespace) -> int:
    from ..hw.impl.synth import synthesize

    say(f"synthesizing {args.design} with yosys (synth_xilinx -family xcup)", chatty(args))
    r = synthesize(args.design, timeout=args.timeout)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{args.design}: LUT {r['lut']}, FF {r['ff']}, DSP {r['dsp']}, BRAM {r['bram']:g} "
              f"(LUTRAM {r['lut_ram']}); {r['yosys_version']}; {r['flags']}; {r['seconds']} s")
    return 0


def cmd_board(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..hw.board import simulate_board, write_board

    out = Path(args.output) if args.output else Path(args.design) / "board"
    b = write_board(args.design, args.board, out, checkpoint=args.checkpoint, layer=args.layer)
    say(f"wrote the {args.board} build into {out}; simulating {b.top} in Verilator ({b.layer}, {b.tokens} tokens, "
        f"{b.beats} result beats)", chatty(args))
    r = simulate_board(b)
    if args.json:
        print(json.dumps({**r, "build": str(out), "layer": b.layer, "board": args.board}, indent=2, default=str))
    else:
        print(f"{out}: {'PASS' if r['pass'] else 'FAIL'}, {r['beats']} beats, {r['mismatches']} mismatches, "
              f"{r['cycles']} array cycles (cycle model {r['model_cycles']}); UART: {r['uart'].strip()!r}")
    return 0 if r["pass"] else 1


def cmd_implement(args: argparse.Namespace) -> int:
    from ..hw.config import HardwareError
    from ..hw.impl.ecp5 import implement, summary

    r = implement(args.design, device=args.device, clock_mhz=args.clock, seed=args.seed, board=args.board,
                  checkpoint=args.checkpoint, layer=args.layer, timeout=args.timeout,
                  progress=lambda text: say(text, chatty(args)), multipliers=args.multipliers)
    print(json.dumps(r, indent=2) if args.json else summary(r))
    if not r["routed"]:
        raise HardwareError(f"{args.design}: not routed on {r['device']}: {r['error']}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from ..format.pattern import Pattern
    from ..hw.estimate.ecp5 import DEVICES
    from ..hw.estimate.explore import BOARDS, explore, format_front

    if args.list_boards:
        for name, b in BOARDS.items():
            print(f"{name:10s} {b['part']:14s} LUT {b['lut']:>8} FF {b['ff']:>8} DSP {b['dsp']:>6} BRAM {b['bram']:>6}")
        for name, d in DEVICES.items():
            print(f"{name:10s} {d['part']:14s} LUT4 {d['lut']:>7} FF {d['ff']:>8} MULT18 {d['dsp']:>3} "
                  f"DP16KD {d['bram']:>4} ({d['bandwidth_gbs']:g} GB/s {d['bandwidth_source']})")
        return 0
    budget = _budget(args)
    p = Pattern.parse(args.pattern)
    r = explore(budget, model=args.model, pattern=(p.n, p.m), bits=args.bits, group=args.group_size,
                tokens=args.batch, clock_mhz=args.clock_mhz, bandwidth_gbs=args.bandwidth_gbs,
                output=args.output)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_front(r))
    return 0


def _budget(args: argparse.Namespace) -> dict:
    from ..hw.estimate.explore import parse_budget, parse_device

    return parse_device(args.device) if args.device else parse_budget(args.budget or "zcu104")


def cmd_energy(args: argparse.Namespace) -> int:
    from ..format.pattern import Pattern
    from ..hw.config import AcceleratorConfig, HardwareError
    from ..hw.estimate import energy
    from ..hw.estimate.explore import energy_report, format_energy

    budget = _budget(args)
    # Dense runs as N = M = 4: one window of 4 activations per step, like the 4-wide sparse patterns.
    patterns = [(4, 4) if p.is_dense else (p.n, p.m)
                for p in (Pattern.parse(s.strip()) for s in args.patterns.split(",") if s.strip())]
    if not patterns:
        raise HardwareError(f"--patterns {args.patterns!r}: accepted comma-separated N:M patterns or dense")
    design = AcceleratorConfig.load(args.design) if args.design else None
    r = energy_report(budget, args.model, patterns, design=design, clock_mhz=args.clock_mhz,
                      bandwidth_gbs=args.bandwidth_gbs)
    counters = energy.rapl_counters()
    if isinstance(counters, str):
        r["cpu"] = {"joules_per_token": None, "status": f"unavailable: {counters}"}
    elif args.cpu_tokens <= 0:
        r["cpu"] = {"joules_per_token": None, "status": "not measured: RAPL counters present; --cpu-tokens N measures"}
    else:
        r["cpu"] = _cpu_energy(args.model, args.cpu_tokens, args)
    print(json.dumps(r, indent=2) if args.json else format_energy(r))
    return 0


def _cpu_energy(model_name: str, tokens: int, args: argparse.Namespace) -> dict:
    import os

    import torch

    from ..bench.e2e.configs import CONFIGS
    from ..bench.e2e.models import build
    from ..hw.estimate import energy

    say(f"building {model_name} (nmq 2:4 INT4, random weights) to measure the CPU", chatty(args))
    model, backend = build(CONFIGS["nmq-2:4-int4"], model_name, "auto", os.cpu_count() or 1)
    prompt = torch.tensor([[1, 2, 3, 4]])

    def run() -> int:
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return out.shape[1] - prompt.shape[1]

    r = energy.cpu_energy(run)
    r["what"] = f"{model_name} nmq 2:4 INT4 on {backend}, {tokens} tokens decoded after a 4-token prefill"
    return r
