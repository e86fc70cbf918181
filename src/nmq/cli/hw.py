"""``nmq hw generate | simulate | synth | explore``: the FPGA accelerator.

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
    "synth": """
        examples:
          nmq hw synth hw/r8c4 --json
    """,
    "explore": """
        examples:
          nmq hw explore --budget zcu104 --model llama-7b
          nmq hw explore --budget 230000,460000,1728,312 --pattern 2:4 -o hw/best --json
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

    p = add("synth", "Synthesize the generated design with Yosys for Xilinx UltraScale+ and count LUT, FF, DSP, BRAM.")
    p.add_argument("design", metavar="DIR", help="a directory written by 'nmq hw generate'")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds")
    p.add_argument("--json", action="store_true", help='print {"lut", "ff", "dsp", "bram", "yosys_version", "flags", ...}')
    p.set_defaults(func=cmd_synth)

    p = add("explore", "Sweep array configurations under a device budget; print the Pareto front; generate the chosen one.")
    p.add_argument("--budget", default="zcu104", metavar="LUT,FF,DSP,BRAM|BOARD",
                   help="resource budget as four numbers, or a board name (default zcu104; see --list-boards)")
    p.add_argument("--model", default="llama-7b", help="model whose linear layers are estimated (default llama-7b)")
    p.add_argument("--pattern", default="2:4", help="N:M pattern of the compressed model (default 2:4)")
    p.add_argument("--bits", type=int, default=4, help="weight bits (default 4)")
    p.add_argument("--group-size", type=int, default=128, help="quantization group (default 128)")
    p.add_argument("--batch", type=int, default=1, help="tokens per forward step (default 1: decode)")
    p.add_argument("--clock-mhz", type=float, default=300.0, help="assumed clock (default 300)")
    p.add_argument("--bandwidth-gbs", type=float, default=19.2, help="assumed off-chip bandwidth in GB/s (default 19.2)")
    p.add_argument("--list-boards", action="store_true", help="print the named budgets and exit")
    p.add_argument("-o", "--output", metavar="DIR", help="generate the chosen design into DIR")
    p.add_argument("--json", action="store_true", help='print {"budget", "front", "chosen", ...}')
    p.set_defaults(func=cmd_explore)
    return hw


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
              f"(LUTRAM {r['lutram']}); {r['yosys_version']}; {r['flags']}; {r['seconds']} s")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from ..format.pattern import Pattern
    from ..hw.estimate.explore import BOARDS, explore, format_front, parse_budget

    if args.list_boards:
        for name, b in BOARDS.items():
            print(f"{name:10s} {b['part']:14s} LUT {b['lut']:>8} FF {b['ff']:>8} DSP {b['dsp']:>6} BRAM {b['bram']:>6}")
        return 0
    budget = parse_budget(args.budget)
    p = Pattern.parse(args.pattern)
    r = explore(budget, model=args.model, pattern=(p.n, p.m), bits=args.bits, group=args.group_size,
                tokens=args.batch, clock_mhz=args.clock_mhz, bandwidth_gbs=args.bandwidth_gbs,
                output=args.output)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_front(r))
    return 0
