import torch
from hypothesis import given
from hypothesis import strategies as st

from nmq.compress.prune import is_nm_sparse, magnitude_mask
from nmq.format.pattern import Pattern
from tests.conftest import ALL_PATTERNS


@given(nm=st.sampled_from(ALL_PATTERNS), seed=st.integers(0, 2**31 - 1), groups=st.integers(1, 6))
def test_magnitude_keeps_exactly_n_largest(nm, seed, groups):
    p = Pattern(*nm)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3, groups * p.m, generator=gen)
    mask = magnitude_mask(w, p)
    g_mask, g_abs = mask.reshape(3, groups, p.m), w.abs().reshape(3, groups, p.m)
    assert (g_mask.sum(-1) == p.n).all()
    kept_min = torch.where(g_mask, g_abs, torch.inf).amin(-1)
    dropped_max = torch.where(g_mask, -torch.inf, g_abs).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert is_nm_sparse(w * mask, p)


def test_ties_go_to_the_lower_index():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert magnitude_mask(w, Pattern(2, 4)).int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]]


def test_is_nm_sparse_detects_violations():
    assert not is_nm_sparse(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), Pattern(2, 4))
    assert is_nm_sparse(torch.tensor([[1.0, 0.0, 1.0, 0.0, 5.0]]), Pattern(2, 4))
