import itertools
import math

import pytest
import torch

from nmq.errors import PatternError
from nmq.format.pattern import Pattern
from tests.conftest import ALL_PATTERNS


@pytest.mark.parametrize("spec", ["5:4", "0:4", "1:17", "17:17", "2-4", "a:b", "", "2:4:8", (3, 2)])
def test_bad_patterns_are_refused_with_the_accepted_range(spec):
    with pytest.raises(PatternError, match="N:M|1 <= N <= M <= 16"):
        Pattern.parse(spec)


def test_parse_forms():
    assert Pattern.parse("2:4") == Pattern(2, 4) == Pattern.parse((2, 4)) == Pattern.parse(" 2:4 ")
    assert Pattern.parse("dense").is_dense and Pattern(8, 8).is_dense and not Pattern(7, 8).is_dense


@pytest.mark.parametrize("n,m,index_bits,rank_bits", [(2, 4, 2, 3), (4, 8, 3, 7), (1, 4, 2, 2), (8, 16, 4, 14), (4, 4, 0, 0)])
def test_metadata_widths(n, m, index_bits, rank_bits):
    p = Pattern(n, m)
    assert (p.index_bits, p.rank_bits) == (index_bits, rank_bits)
    assert p.meta_bits("index") == n * index_bits


@pytest.mark.parametrize("n,m", [p for p in ALL_PATTERNS if math.comb(p[1], p[0]) <= 20000 and p[0] < p[1]])
def test_rank_is_a_bijection_onto_0_to_comb(n, m):
    p = Pattern(n, m)
    subsets = torch.tensor(list(itertools.combinations(range(m), n)))
    ranks = p.positions_to_rank(subsets)
    assert sorted(ranks.tolist()) == list(range(math.comb(m, n)))
    assert torch.equal(p.rank_to_positions(ranks), subsets)
    assert int(ranks.max()).bit_length() <= p.rank_bits


def test_rank_out_of_range_is_refused():
    with pytest.raises(PatternError, match="rank out of range"):
        Pattern(2, 4).rank_to_positions(torch.tensor([6]))
