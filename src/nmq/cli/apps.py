"""``nmq report | demo``: the applications."""

from __future__ import annotations

import argparse
import json

from ..errors import NMQError
from .common import command

EXAMPLES = {
    "report": """
        examples:
          nmq report
          nmq report --results benchmarks/results --out report/
    """,
    "demo": """
        example:
          nmq demo
    """,
}


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = command(sub, common, "report", "Gather the benchmark results present into one HTML page with plots, and a markdown summary.",
                EXAMPLES["report"])
    p.add_argument("--results", default="benchmarks/results", metavar="DIR",
                   help="directory of --json results: kernels.json, accuracy.json, e2e.json, hw-explore.json")
    p.add_argument("--out", default="report", metavar="DIR", help="where report.html and report.md go (default report/)")
    p.add_argument("--json", action="store_true", help="print what was included and what is missing as JSON")
    p.set_defaults(func=cmd_report)

    p = command(sub, common, "demo", "Compress the built-in model 2:4 + INT4, show storage, check logits, generate text.",
                EXAMPLES["demo"])
    p.add_argument("--out", metavar="DIR", help="keep the checkpoint in DIR (replaced if it exists)")
    p.add_argument("--tokens", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_report(args: argparse.Namespace) -> int:
    from ..apps.report import build_report

    r = build_report(args.results, args.out)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"wrote {r['html']} and {r['markdown']}: sections {', '.join(r['sections'])}"
              + (f"; missing results for {', '.join(r['missing'])}" if r["missing"] else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..apps.demo import format_demo, run_demo

    if args.tokens < 1:
        raise NMQError(f"--tokens {args.tokens}: accepted a positive number of tokens")
    result = run_demo(out_dir=args.out, new_tokens=args.tokens, progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else format_demo(result))
    return 0 if result["check_passed"] else 1
