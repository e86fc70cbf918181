"""``nmq bench accuracy | e2e | kernels``: each benchmark declares its own options in its module."""

from __future__ import annotations

import argparse

from .common import command

EXAMPLES = """
        examples:
          nmq bench accuracy --json
          nmq bench kernels --shapes llama-7b --layers 3 --batch 1,128 --json
"""


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = command(sub, common, "bench", "Benchmarks: accuracy of compression methods, kernel speed.", EXAMPLES)
    bench = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    from ..bench import accuracy, e2e, kernels

    for module in (accuracy, e2e, kernels):
        module.add_parser(bench, common)
