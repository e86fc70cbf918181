"""What the benchmarks share: their error, checks of their options, the matrices they time, their thread count.

>>> parse_ints("1,16", "--batch", 4096)
[1, 16]
>>> parse_names("b,a", "--kernels", ("a", "b", "c"))
['b', 'a']
>>> select_shapes("24x320", None, {})
[('matrix', 24, 320)]
"""

from __future__ import annotations

import os

from ..errors import NMQError
from ..shapes import parse_shape

# A median of fewer passes moves with a single pass slowed by a neighbour.
MIN_RUNS = 10


class BenchError(NMQError, ValueError):
    """Benchmark options that cannot be run."""


def parse_ints(text: str, option: str, most: int, error: type[NMQError] = BenchError) -> list[int]:
    """Comma-separated integers in ``1..most``."""
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 or v > most for v in vals):
        raise error(f"{option} {text!r}: accepted: comma-separated integers in 1..{most}")
    return vals


def parse_names(text: str, option: str, accepted, error: type[NMQError] = BenchError) -> list[str]:
    """Comma-separated names, each one of ``accepted``, in the order given."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in accepted]
    if bad or not names:
        given = f"unknown {', '.join(map(repr, bad))}" if bad else "none given"
        raise error(f"{option}: {given}; accepted: {', '.join(accepted)}")
    return names


def at_least(value: int, option: str, least: int, error: type[NMQError] = BenchError) -> int:
    if not isinstance(value, int) or value < least:
        raise error(f"{option} {value!r}: accepted: an integer, {least} or more")
    return value


def check_runs(runs: int, error: type[NMQError] = BenchError) -> int:
    if runs < MIN_RUNS:
        raise error(f"--runs {runs}: every figure is a median of at least {MIN_RUNS} runs")
    return runs


def select_shapes(shape: str | None, shapes: str | None, sets: dict[str, list[tuple[str, int, int]]],
                  error: type[NMQError] = BenchError) -> list[tuple[str, int, int]]:
    """``(name, out, in)`` of ``--shape OUTxIN`` if given, else of the named set ``--shapes``."""
    if shape:
        return [("matrix", *parse_shape(shape, error=error))]
    if shapes not in sets:
        raise error(f"--shapes {shapes!r} is unknown; accepted: {', '.join(sets)} (or --shape OUTxIN)")
    return list(sets[shapes])


def cpu_threads(requested: int | None, error: type[NMQError] = BenchError) -> int:
    """``--threads``, or every CPU this process may run on."""
    if requested is None:
        return len(os.sched_getaffinity(0))
    return at_least(requested, "--threads", 1, error)
