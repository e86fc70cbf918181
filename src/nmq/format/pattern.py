"""N:M structured sparsity patterns and their metadata encodings.

In every group of M consecutive weights along the reduction dimension K, at
most N are nonzero. The positions kept in a group are stored as metadata, in
one of two encodings (DESIGN.md section 2):

* ``index``: each kept position as a ``ceil(log2 M)``-bit number, ascending
  within the group (for 2:4 this is NVIDIA's sparse metadata);
* ``rank``: the whole set of kept positions as its rank in the combinatorial
  number system (colex order), ``ceil(log2 C(M, N))`` bits per group.

>>> p = Pattern.parse("2:4")
>>> p.index_bits, p.rank_bits, p.meta_bits("rank")
(2, 3, 3)
>>> import torch
>>> pos = torch.tensor([[0, 1], [1, 3], [2, 3]])
>>> ranks = p.positions_to_rank(pos)
>>> ranks.tolist()
[0, 4, 5]
>>> p.rank_to_positions(ranks).tolist()
[[0, 1], [1, 3], [2, 3]]
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch

from ..errors import PatternError

MAX_M = 16
METADATA_ENCODINGS = ("index", "rank")


@dataclass(frozen=True)
class Pattern:
    """An N:M pattern: at most ``n`` nonzeros in each group of ``m`` along K."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise PatternError(f"pattern {self.n!r}:{self.m!r}: N and M must be integers")
        if not 1 <= self.m <= MAX_M:
            raise PatternError(
                f"pattern {self.n}:{self.m}: M={self.m} is out of range; accepted 1 <= N <= M <= {MAX_M}"
            )
        if not 1 <= self.n <= self.m:
            raise PatternError(
                f"pattern {self.n}:{self.m}: N={self.n} is out of range; accepted 1 <= N <= M <= {MAX_M}"
            )

    @classmethod
    def parse(cls, spec: str | tuple[int, int] | Pattern) -> Pattern:
        """Accept ``"2:4"``, ``(2, 4)``, ``"dense"`` (taken as 1:1) or a Pattern."""
        if isinstance(spec, Pattern):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2:
            return cls(*spec)
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text == "dense":
                return cls(1, 1)
            parts = text.split(":")
            if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
                return cls(int(parts[0]), int(parts[1]))
        raise PatternError(f"pattern {spec!r} is not of the form N:M (e.g. 2:4, 4:8, or 'dense')")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def is_dense(self) -> bool:
        """True when every weight is kept (N == M): no metadata is stored."""
        return self.n == self.m

    @property
    def index_bits(self) -> int:
        """Bits for one kept position in the ``index`` encoding."""
        return 0 if self.is_dense else max(1, math.ceil(math.log2(self.m)))

    @property
    def rank_bits(self) -> int:
        """Bits for one group's position set in the ``rank`` encoding."""
        count = math.comb(self.m, self.n)
        return 0 if count == 1 else math.ceil(math.log2(count))

    def meta_bits(self, encoding: str) -> int:
        """Metadata bits per M-group in the given encoding."""
        check_encoding(encoding)
        return self.n * self.index_bits if encoding == "index" else self.rank_bits

    def meta_codes_per_group(self, encoding: str) -> tuple[int, int]:
        """(codes per group, bits per code) of the given encoding."""
        check_encoding(encoding)
        if self.is_dense:
            return 0, 0
        return (self.n, self.index_bits) if encoding == "index" else (1, self.rank_bits)

    # -- the combinatorial number system -----------------------------------

    def positions_to_rank(self, positions: torch.Tensor) -> torch.Tensor:
        """Ranks (int64) of ascending position sets ``[..., n]``: sum of C(p_i, i+1)."""
        table = _binomials(self.m)
        ranks = torch.zeros(positions.shape[:-1], dtype=torch.int64)
        for i in range(self.n):
            ranks += table[positions[..., i].long(), i + 1]
        return ranks

    def rank_to_positions(self, ranks: torch.Tensor) -> torch.Tensor:
        """Ascending position sets ``[..., n]`` (int64) of the given ranks."""
        table = unrank_table(self.n, self.m)
        ranks = ranks.long()
        if ranks.numel() and (ranks.min() < 0 or ranks.max() >= table.shape[0]):
            raise PatternError(f"pattern {self}: rank out of range 0..{table.shape[0] - 1}")
        return table[ranks]


def check_encoding(encoding: str) -> str:
    if encoding not in METADATA_ENCODINGS:
        raise PatternError(f"metadata encoding {encoding!r} is unknown; accepted: index, rank")
    return encoding


@functools.lru_cache(maxsize=None)
def _binomials(m: int) -> torch.Tensor:
    """``table[p, i] = C(p, i)`` for 0 <= p < m, 0 <= i <= m."""
    return torch.tensor([[math.comb(p, i) for i in range(m + 1)] for p in range(m)], dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def unrank_table(n: int, m: int) -> torch.Tensor:
    """Every n-subset of range(m), ascending, listed in colex (rank) order."""
    subsets = sorted(itertools.combinations(range(m), n), key=lambda s: s[::-1])
    return torch.tensor(subsets, dtype=torch.int64).reshape(len(subsets), n)
