import os

import pytest

from nmq.bench.common import (
    BenchError,
    at_least,
    check_runs,
    cpu_threads,
    parse_ints,
    parse_names,
    select_shapes,
)
from nmq.errors import NMQError


class OtherError(NMQError):
    pass


def test_parse_ints():
    assert parse_ints(" 1, 16,128 ", "--batch", 4096) == [1, 16, 128]
    for text in ("", "0", "1,x", "4097"):
        with pytest.raises(BenchError, match="--batch .*: accepted: comma-separated integers in 1..4096"):
            parse_ints(text, "--batch", 4096)
    with pytest.raises(OtherError):
        parse_ints("0", "--batch", 8, OtherError)


def test_parse_names_keeps_the_order_and_names_the_accepted():
    assert parse_names("c,a", "--kernels", ("a", "b", "c")) == ["c", "a"]
    with pytest.raises(BenchError, match=r"--kernels: unknown 'x', 'y'; accepted: a, b, c"):
        parse_names("a,x,y", "--kernels", ("a", "b", "c"))
    with pytest.raises(BenchError, match="none given"):
        parse_names(" , ", "--kernels", ("a",))


def test_counts():
    assert at_least(3, "--layers", 1) == 3 and check_runs(10) == 10
    with pytest.raises(BenchError, match="--layers 0: accepted: an integer, 1 or more"):
        at_least(0, "--layers", 1)
    with pytest.raises(BenchError, match="--layers '2'"):
        at_least("2", "--layers", 1)
    with pytest.raises(BenchError, match="median of at least 10 runs"):
        check_runs(9)


def test_threads():
    assert cpu_threads(None) == len(os.sched_getaffinity(0)) and cpu_threads(3) == 3
    with pytest.raises(BenchError, match="--threads 0"):
        cpu_threads(0)


def test_select_shapes():
    sets = {"one": [("q", 8, 16)], "two": [("a", 1, 2), ("b", 3, 4)]}
    assert select_shapes(None, "two", sets) == [("a", 1, 2), ("b", 3, 4)]
    assert select_shapes("5x7", "two", sets) == [("matrix", 5, 7)]
    with pytest.raises(BenchError, match=r"--shapes 'six' is unknown; accepted: one, two \(or --shape OUTxIN\)"):
        select_shapes(None, "six", sets)
    with pytest.raises(BenchError, match="--shape '5x'"):
        select_shapes("5x", None, sets)
