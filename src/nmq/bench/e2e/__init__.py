"""``nmq bench e2e``: token-by-token decoding of a whole model, per configuration.

Each configuration (:mod:`nmq.bench.e2e.configs`) runs in a process of its
own (:mod:`nmq.bench.e2e.worker`), so peak RSS is that configuration's alone.
The nmq configurations are timed *side by side* (:mod:`nmq.bench.e2e.driver`):
their processes build their models, then take turns decoding, ``--rounds``
rounds of ``--new-tokens`` tokens each, so a ratio between them is not the
drift of the machine's memory bandwidth from one minute to the next (on the
2-core reference machine a plain read stream ranges 39-62 GB/s within a
minute). The PyTorch baselines (whose models do not fit in memory beside the
others at LLaMA-7B size) run alone, one after another, ``--rounds``
generations each; the ``fpga-model`` rows come from the accelerator's cycle
model. Models (:mod:`nmq.bench.e2e.models`) have random weights, built
directly in their final form; the nmq configurations run the decoder's linear
layers on the ``--path`` numeric path (default ``w4a8``: int8 activations per
group of 128, like ONNX Runtime's accuracy level 4), with nmq's thread pool
on every core and PyTorch's ops around them on one thread. Timing: after an
untimed warm-up generation of a few tokens, a random prompt is prefilled,
then ``--new-tokens`` tokens are decoded one by one with the KV cache;
``ms_per_token`` is the median decode step over all rounds.
"""

from __future__ import annotations

import argparse
import json

from ...shapes import SHAPES
from .. import gpu_decode
from ..common import BenchError, at_least
from .configs import CONFIGS, DEFAULT_CONFIGS, parse_configs
from .driver import alone, side_by_side
from .models import fpga_estimate
from .worker import Spec


def add_parser(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "e2e", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="decode latency, tokens/s and peak memory of whole models, dense vs compressed",
        description="Decode token by token with random-weight LLaMA-shaped models, one process per configuration; "
                    "the nmq configurations take turns round by round (side by side), the PyTorch baselines run alone.",
        epilog="examples:\n  nmq bench e2e --model llama-7b --json\n  nmq bench e2e --model tiny --configs nmq-2:4-int4 --backend reference\n"
               "  nmq bench e2e --device cuda --model llama-7b --json   # Triton and cuSPARSELt vs fp16, on a GPU\n",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (default): nmq's CPU kernels, one process per configuration; cuda: nmq's Triton kernels "
                        f"and cuSPARSELt against fp16 PyTorch, in one process (configs {', '.join(gpu_decode.GPU_CONFIGS)})")
    p.add_argument("--model", default="llama-7b", choices=sorted(SHAPES), help="model shape (default llama-7b)")
    p.add_argument("--configs", help=f"comma-separated: {', '.join(CONFIGS)} (default {','.join(DEFAULT_CONFIGS)}; "
                   "on cuda the GPU configurations, all by default)")
    p.add_argument("--layers", type=int, help="decoder layers of --model (default: all; cuda only)")
    p.add_argument("--out", metavar="FILE", help="cuda only: also write the records to FILE as JSON, rewritten after "
                   "every configuration")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default 32)")
    p.add_argument("--new-tokens", type=int, default=16, help="decoded tokens (default 16)")
    p.add_argument("--backend", default="auto", help="backend of the nmq configurations (default auto)")
    p.add_argument("--threads", type=int, help="threads (default: all)")
    p.add_argument("--path", default="w4a8", choices=["w4a8", "w4a16"],
                   help="numeric path of the nmq configurations (default w4a8: int8 activations per group of 128)")
    p.add_argument("--rounds", type=int, default=5,
                   help="generations of --new-tokens per configuration (default 5); the nmq configurations take "
                        "turns, one round each, so their ratio is measured side by side")
    p.add_argument("--sequential", action="store_true",
                   help="run every configuration alone, one after another, instead of the nmq ones side by side")
    p.add_argument("--json", action="store_true", help='print records {"config", "ms_per_token", "tokens_per_s", '
                   '"prefill_ms", "peak_rss_gb", "backend", ...}')
    p.set_defaults(func=cmd_e2e)
    return p


def cmd_e2e(args: argparse.Namespace) -> int:
    if args.device == "cuda":
        records = gpu_decode.run(args)
        print(json.dumps(records, indent=2) if args.json else gpu_decode.format_table(records))
        return 0
    if args.layers is not None or args.out:
        raise BenchError("--layers and --out are for --device cuda; on cpu every layer of --model decodes, "
                         "and --json prints the records")
    configs = parse_configs(args.configs or ",".join(DEFAULT_CONFIGS))
    spec = Spec(args.model, args.prompt_tokens, args.new_tokens, args.backend, args.threads, args.path)
    rounds = at_least(args.rounds, "--rounds", 1)
    verbose = not args.quiet
    together = [] if args.sequential else [c.name for c in configs if c.kind == "nmq"]
    records = side_by_side(together, spec, rounds, verbose) if len(together) > 1 else {}
    for c in configs:
        if c.name not in records:
            records[c.name] = fpga_estimate(c, args.model) if c.kind == "fpga-model" else alone(c.name, spec, rounds,
                                                                                                 verbose)
    ordered = [records[c.name] for c in configs]
    print(json.dumps(ordered, indent=2) if args.json else format_table(ordered))
    return 0


def format_table(records: list[dict]) -> str:
    base = next((r for r in records if r["config"] == "nmq-dense-int4"), None)
    bf16 = next((r for r in records if r["config"] == "torch-bf16"), None)
    lines = [(f"{'config':<21} {'backend':>16} {'ms/token':>10} {'tokens/s':>9} {'prefill ms':>11} {'peak RSS GB':>12} "
              f"{'vs dense-int4':>14} {'vs bf16':>8}")]
    for r in records:
        vs_int4 = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        vs_bf16 = f"{r['tokens_per_s'] / bf16['tokens_per_s']:.2f}x" if bf16 else "-"
        prefill = "-" if r["prefill_ms"] is None else f"{r['prefill_ms']:.1f}"
        rss = "-" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f}"
        lines.append(f"{r['config']:<21} {r['backend']:>16} {r['ms_per_token']:>10.2f} {r['tokens_per_s']:>9.2f} "
                     f"{prefill:>11} {rss:>12} {vs_int4:>14} {vs_bf16:>8}")
    return "\n".join(lines)
