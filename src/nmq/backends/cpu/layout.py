"""The cpu backend's two weight layouts, built once by :func:`prepack`.

* the *fast* layout, for 4-bit codes with pattern 2:4, 4:8, 1:4 or dense
  (N == M) and a group length that is a multiple of 8 (or one group per row):
  rows in blocks of 16, K in steps of 8, one accumulator lane per row; beside
  the packed codes, 2-bit positions (2:4: the kernels gather the activations
  each kept weight meets), keep masks (4:8: the kernels scatter the codes
  with one vpexpandb) or 2-bit positions turned into masks (1:4);
* the *generic* layout, for every other weight (any N:M with M <= 16, 2/3/8-bit
  codes, odd group lengths): the canonical NMQTensor bytes, decoded row by row.

Neither keeps a dense copy. A layout's numbers are :class:`FastParams` or
:class:`GenericParams`, mirrors of the C++ structs of the same names
(``kernels/cpu/kernels.h``) that :func:`to_native` hands over field by field.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from ...format import bitpack
from ...format.pattern import unrank_table
from ...format.tensor import NMQTensor
from .ext import native

# As kernels.h has them (tests/backends/cpu/test_layout.py compares).
KIND_24, KIND_48, KIND_14, KIND_DENSE = 1, 2, 3, 4
META_DENSE, META_INDEX, META_RANK = 0, 1, 2
ROWS, PAIR_K = 16, 8
QUAD24 = 48  # metadata bytes of 4 pair-steps of a 2:4 row block
# Bytes per pair-step and row block of the codes and the metadata (fast_vbytes, fast_mbytes).
GEOMETRY = {KIND_24: (32, 12), KIND_48: (32, 16), KIND_14: (16, 8), KIND_DENSE: (64, 0)}
PACK_CHUNK_ROWS = 1024  # a multiple of ROWS
HUGE_PAGE = 2 << 20


@dataclass(frozen=True)
class FastParams:
    """The numbers of a fast layout (the C++ ``FastParams``, field for field)."""

    kind: int
    out: int  # logical rows
    blocks: int  # row blocks, ceil(out / 16)
    kk: int  # K the kernels run over: padded_in rounded up to 8
    group: int  # quantization group length along K (a multiple of 8)
    groups: int
    steps: int  # pair-steps per group
    vbytes: int
    mbytes: int
    in_features: int
    symmetric: bool

    def block_sizes(self) -> tuple[int, int, int, int]:
        """Elements per row block of each buffer: values, metadata, scales (int16), zeros."""
        pairs = self.groups * self.steps
        if self.kind == KIND_24:  # two pair-steps per 64 value bytes, quads of four in the metadata
            vals, meta = -(-pairs // 2) * 64, -(-pairs // 4) * QUAD24
        else:
            vals, meta = pairs * self.vbytes, pairs * self.mbytes
        return vals, meta, self.groups * ROWS, 0 if self.symmetric else self.groups * 8

    @property
    def spare(self) -> int:
        """Bytes after the last row block's metadata: 2:4 kernels read it in 8-byte words."""
        return 16 if self.kind == KIND_24 else 0


@dataclass(frozen=True)
class GenericParams:
    """The numbers of the canonical layout (the C++ ``GenericParams``, field for field)."""

    out: int
    in_features: int
    padded_in: int
    n: int
    m: int
    bits: int
    group: int
    groups: int
    meta_kind: int  # META_DENSE, META_INDEX or META_RANK
    meta_width: int  # bits per metadata code
    symmetric: bool


def to_native(params: FastParams | GenericParams):
    """The extension's struct of the same name, set field by field (it refuses a name it lacks)."""
    out = getattr(native, type(params).__name__)()
    for f in fields(params):
        setattr(out, f.name, getattr(params, f.name))
    return out


def fast_kind(t: NMQTensor) -> int:
    """The fast layout a weight gets, 0 when it runs on the generic one."""
    n, m = t.pattern.n, t.pattern.m
    if t.bits != 4 or (t.group_size != -1 and t.group_size % PAIR_K):
        return 0
    if (n, m) == (2, 4):
        return KIND_24
    if (n, m) == (4, 8):
        return KIND_48
    if (n, m) == (1, 4):
        return KIND_14
    if n == m:
        return KIND_DENSE
    return 0


def prepack(t: NMQTensor) -> tuple[FastParams | GenericParams, tuple[torch.Tensor, ...]]:
    """The layout of a validated weight: its numbers and buffers (values, metadata, scales, zeros[, rank table])."""
    t.validate(chunk_rows=PACK_CHUNK_ROWS)
    kind = fast_kind(t)
    return _pack_fast(t, kind) if kind else _pack_generic(t)


def stackable(params: list[FastParams | GenericParams]) -> bool:
    """Fast layouts of one geometry whose row counts (but the last) are multiples of 16."""
    if len(params) < 2 or not all(isinstance(p, FastParams) for p in params):
        return False
    first = params[0]
    if any(replace(p, out=first.out, blocks=first.blocks) != first for p in params):
        return False
    return all(p.out % ROWS == 0 for p in params[:-1])


def stack(params: list[FastParams], buffers: list[tuple[torch.Tensor, ...]]):
    """One layout with the row blocks of all :func:`stackable` parts in order, and each part's buffers as views
    of its memory: the layouts are row-block major, so stacking is concatenation."""
    first = params[0]
    per_block, spare = first.block_sizes(), first.spare
    stacked = []
    for j in range(4):
        chunks = [b[j][: p.blocks * per_block[j]] for p, b in zip(params, buffers)]
        stacked.append(torch.cat(chunks + ([torch.zeros(spare, dtype=torch.uint8)] if j == 1 else [])))
    bufs = hugepage_copy(tuple(stacked))
    whole = replace(first, out=sum(p.out for p in params), blocks=sum(p.blocks for p in params))
    views, b0 = [], 0
    for p in params:
        b1 = b0 + p.blocks
        views.append(tuple(buf[b0 * n : b1 * n + (spare if j == 1 else 0)]
                           for j, (buf, n) in enumerate(zip(bufs, per_block))))
        b0 = b1
    return whole, bufs, views


def _pack_rows(t: NMQTensor, kind: int, kk: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and metadata of the fast layout for all rows of t (a chunk of whole row blocks)."""
    out, n, m = t.out_features, t.pattern.n, t.pattern.m
    blocks = -(-out // ROWS)
    outp = blocks * ROWS
    if kind == KIND_24:
        return _pack24(bitpack.unpack(t.values, t.bits, t.kept_per_row, torch.uint8), _ranks24(t), out, blocks, pairs)
    codes = t.codes().to(torch.uint8)  # [out, kept]
    if kind == KIND_48:
        # Keep mask and codes at dense positions; padding rows keep the first N
        # of each M-group (with code 0) so every pair-step holds exactly 64 codes.
        keep = (torch.arange(kk) % m < n).expand(outp, kk).clone()
        dense = torch.zeros(outp, kk, dtype=torch.uint8)
        pos = t.positions()
        real = torch.zeros(out, kk, dtype=torch.bool)
        real.scatter_(1, pos, True)
        keep[:out, : t.padded_in] = real[:, : t.padded_in]
        dense[:out].scatter_(1, pos, codes)
        # [blocks, 16, pairs, 2, 4] -> [blocks, pairs, 2, 16, 4]: pair-steps of two 16x4 domains.
        keep = keep.reshape(blocks, ROWS, pairs, 2, 4).permute(0, 2, 3, 1, 4).reshape(blocks * pairs, 128)
        dense = dense.reshape(blocks, ROWS, pairs, 2, 4).permute(0, 2, 3, 1, 4).reshape(blocks * pairs, 128)
        kept = dense[keep].reshape(blocks * pairs, 64)
        vals = kept[:, :32] | (kept[:, 32:] << 4)
        bits = keep.reshape(blocks * pairs, 16, 8).to(torch.int32) << torch.arange(8, dtype=torch.int32)
        meta = bits.sum(-1).to(torch.uint8)
    elif kind == KIND_14:
        idx = torch.zeros(outp, kk // 4, dtype=torch.uint8)
        code = torch.zeros(outp, kk // 4, dtype=torch.uint8)
        idx[:out, : t.padded_in // 4] = t.group_positions()[..., 0].to(torch.uint8)
        code[:out, : t.padded_in // 4] = codes
        idx = idx.reshape(blocks, ROWS, pairs, 2).permute(0, 2, 3, 1).reshape(blocks * pairs, 2, ROWS)
        code = code.reshape(blocks, ROWS, pairs, 2).permute(0, 2, 3, 1).reshape(blocks * pairs, 32)
        vals = code[:, :16] | (code[:, 16:] << 4)
        # Two bits per row, four rows per byte, little end first.
        quad = idx.reshape(blocks * pairs, 2, 4, 4).to(torch.int32) << (2 * torch.arange(4, dtype=torch.int32))
        meta = quad.sum(-1).to(torch.uint8).reshape(blocks * pairs, 8)
    elif kind == KIND_DENSE:
        dense = torch.zeros(outp, kk, dtype=torch.uint8)
        dense[:out, : t.padded_in] = codes.reshape(out, t.padded_in)
        dense = dense.reshape(blocks, ROWS, pairs, 2, 4).permute(0, 2, 3, 1, 4).reshape(blocks * pairs, 2, 64)
        vals = dense[:, 0] | (dense[:, 1] << 4)
        meta = torch.zeros(0, dtype=torch.uint8)
    return vals, meta


def _pack_fast(t: NMQTensor, kind: int) -> tuple[FastParams, tuple[torch.Tensor, ...]]:
    out = t.out_features
    kk = -(-t.padded_in // PAIR_K) * PAIR_K
    group = kk if t.group_size == -1 else t.group
    groups = kk // group
    blocks = -(-out // ROWS)
    outp = blocks * ROWS
    pairs = kk // PAIR_K
    vbytes, mbytes = GEOMETRY[kind]
    params = FastParams(kind=kind, out=out, blocks=blocks, kk=kk, group=group, groups=groups, steps=group // PAIR_K,
                        vbytes=vbytes, mbytes=mbytes, in_features=t.in_features, symmetric=t.symmetric)

    # In chunks of rows: decoding the format's bit streams takes int32 and
    # int64 temporaries many times the packed size. Layouts are row-block
    # major, so the chunks' bytes simply follow each other.
    parts = [_pack_rows(t.slice_rows(r0, min(out, r0 + PACK_CHUNK_ROWS)), kind, kk, pairs)
             for r0 in range(0, out, PACK_CHUNK_ROWS)]
    vals = torch.cat([v.reshape(-1) for v, _ in parts])
    meta = torch.cat([mt.reshape(-1) for _, mt in parts] + [torch.zeros(params.spare, dtype=torch.uint8)])

    scales = torch.zeros(outp, groups, dtype=torch.float16)
    scales[:out] = t.scales
    scales = scales.reshape(blocks, ROWS, groups).permute(0, 2, 1).contiguous()
    if t.symmetric:
        zeros = torch.zeros(0, dtype=torch.uint8)
    else:
        z = torch.full((outp, groups), 8, dtype=torch.uint8)
        z[:out] = t.zero_codes().to(torch.uint8)
        z = z.reshape(blocks, ROWS, groups).permute(0, 2, 1)
        zeros = (z[..., :8] | (z[..., 8:] << 4)).contiguous()
    bufs = (vals.contiguous().reshape(-1), meta.contiguous().reshape(-1), scales.reshape(-1).view(torch.int16),
            zeros.reshape(-1))
    return params, hugepage_copy(bufs)


# 2:4 kept-position pairs inside a 4-group by 3-bit rank (colex order).
_PAIRS24 = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
# Byte order of a row's four kept codes in its 32-bit lane: code 0, 2, 1, 3, so
# that the lane read as two 16-bit words holds codes (0, 1) and, shifted right
# by 8 bits, codes (2, 3): the pairs a bf16 dot product instruction takes.
_SLOT_CODE = (0, 2, 1, 3)


def _ranks24(t: NMQTensor) -> torch.Tensor:
    """The 3-bit rank of every 4-group's kept pair, uint8 ``[out, K/4]``: the format's own metadata codes when
    it stores ranks (the same colex order), else computed from the positions."""
    if t.metadata == "rank":
        return bitpack.unpack(t.meta, 3, t.padded_in // 4, torch.uint8)
    gpos = t.group_positions()
    lut = torch.zeros(4, 4, dtype=torch.uint8)
    for r, (a, b) in enumerate(_PAIRS24):
        lut[a, b] = r
    return lut[gpos[..., 0], gpos[..., 1]]


def _pack24(codes: torch.Tensor, ranks: torch.Tensor, out: int, blocks: int, pairs: int):
    """The 2:4 fast layout (see kernels.h): codes [out, kept], ranks [out, K/4].

    In NumPy, like :func:`nmq.format.bitpack.unpack`: a layer's few passes over
    small arrays, where PyTorch's threaded ops cost more to start than to run.
    """
    outp = blocks * ROWS
    code = np.zeros((outp, pairs, 4), np.uint8)
    code.reshape(outp, -1)[:out, : codes.shape[1]] = codes.numpy()
    rank = np.zeros((outp, pairs * 2), np.int64)
    rank[:out, : ranks.shape[1]] = ranks.numpy()
    # Values: per two pair-steps 64 bytes, byte 4 * row + slot holding that
    # code of the first step in its low nibble and of the second in its high
    # one (a zero step pads an odd count).
    code = code[..., list(_SLOT_CODE)]
    if pairs % 2:
        code = np.concatenate([code, np.zeros((outp, 1, 4), np.uint8)], axis=1)
    nib = code.reshape(blocks, ROWS, -1, 2, 4).transpose(0, 2, 3, 1, 4).reshape(-1, 2, 64)  # [b, two-step, step, row, slot]
    vals = nib[:, 0] | (nib[:, 1] << 4)
    # Metadata: per row and pair-step 6 bits (rank of the first 4-group, then
    # of the second); per quad of pair-steps 8 row pairs x 48 bits, bit
    # 12 * step + 6 * row-in-pair.
    quads = -(-pairs // 4)
    field = np.zeros((outp, quads * 4), np.int64)
    rank = rank.reshape(outp, pairs, 2)
    field[:, :pairs] = rank[..., 0] | (rank[..., 1] << 3)
    field = field.reshape(blocks, 8, 2, quads, 4).transpose(0, 3, 1, 4, 2).reshape(blocks, quads, 8, 8)
    word = (field << (6 * np.arange(8, dtype=np.int64))).sum(-1)  # 48 bits per row pair
    meta = ((word[..., None] >> (8 * np.arange(6, dtype=np.int64))) & 0xFF).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.ascontiguousarray(vals).reshape(-1)), torch.from_numpy(meta)  # + spare bytes


def _pack_generic(t: NMQTensor) -> tuple[GenericParams, tuple[torch.Tensor, ...]]:
    p = t.pattern
    if p.is_dense:
        meta_kind, width = META_DENSE, 0
        table = torch.zeros(0, dtype=torch.uint8)
    elif t.metadata == "index":
        meta_kind, width = META_INDEX, p.index_bits
        table = torch.zeros(0, dtype=torch.uint8)
    else:
        meta_kind, width = META_RANK, p.rank_bits
        table = _rank_table(p.n, p.m)
    zeros = t.zeros.contiguous() if t.zeros is not None else torch.zeros(0, dtype=torch.uint8)
    params = GenericParams(out=t.out_features, in_features=t.in_features, padded_in=t.padded_in, n=p.n, m=p.m,
                           bits=t.bits, group=t.group, groups=t.groups, meta_kind=meta_kind, meta_width=width,
                           symmetric=t.symmetric)
    bufs = hugepage_copy((t.values.contiguous(), t.meta.contiguous(), t.scales.contiguous().view(torch.int16), zeros))
    return params, bufs + (table,)


def hugepage_copy(bufs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The buffers copied into one anonymous mapping that asks for transparent
    huge pages (Linux, layers of 2 MiB or more); smaller ones as they are.

    The kernels stream a layer's bytes once per token; the hardware prefetchers
    stop at every 4 KiB page boundary, so on 4 KiB pages a core reads well
    below the memory's bandwidth (here ~37 GB/s against ~60 GB/s on huge
    pages). Only whole 2 MiB pages are asked for: the tail stays on small pages
    and costs no memory.
    """
    sizes = [b.numel() * b.element_size() for b in bufs]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // 64) * 64
    if total < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return bufs
    mm = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(mm)) % HUGE_PAGE
    try:
        mm.madvise(mmap.MADV_HUGEPAGE, start, total // HUGE_PAGE * HUGE_PAGE)
    except OSError:  # THP disabled: small pages still work
        pass
    raw = torch.frombuffer(mm, dtype=torch.uint8)  # keeps the mapping alive
    out = []
    for b, n, o in zip(bufs, sizes, offsets):
        view = raw[start + o : start + o + n].view(b.dtype).view(b.shape)
        view.copy_(b)
        out.append(view)
    return tuple(out)


_TABLES: dict[tuple[int, int], torch.Tensor] = {}


def _rank_table(n: int, m: int) -> torch.Tensor:
    key = (n, m)
    if key not in _TABLES:
        _TABLES[key] = unrank_table(n, m).to(torch.uint8).contiguous()
    return _TABLES[key]
