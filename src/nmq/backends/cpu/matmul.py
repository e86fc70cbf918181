"""The ``cpu`` backend: C++ kernels (``nmq._nmq_cpu``) with runtime ISA dispatch.

Two weight layouts, both built once by :meth:`CpuBackend.prepack`:

* the *fast* layout, for 4-bit codes with pattern 2:4, 4:8, 1:4 or dense
  (N == M) and a group length that is a multiple of 8 (or one group per row):
  rows in blocks of 16, K in steps of 8, one accumulator lane per row; beside
  the packed codes, 2-bit positions (2:4: the kernels gather the activations
  each kept weight meets), keep masks (4:8: the kernels scatter the codes
  with one vpexpandb) or 2-bit positions turned into masks (1:4);
* the *generic* layout, for every other weight (any N:M with M <= 16, 2/3/8-bit
  codes, odd group lengths): the canonical NMQTensor bytes, decoded row by row.

Neither keeps a dense copy. ``NMQ_CPU_ISA=avx512|avx2|portable`` forces the
instruction set (:func:`set_isa` does the same at run time); ``NMQ_THREADS`` or
:func:`set_threads` sets the thread count (default: the CPUs this process may
run on).

>>> import torch, nmq
>>> from nmq.backends import get_backend
>>> t = nmq.compress_weight(torch.randn(32, 256), pattern="2:4", group_size=128)
>>> cpu = get_backend("cpu")
>>> x = torch.randn(3, 256)
>>> y = cpu.matmul(x, cpu.prepack(t), "w4a8")
>>> bool(torch.equal(y, nmq.matmul(x, t, backend="reference", path="w4a8")))
True
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

import torch

from ...errors import BackendError
from ...format.pattern import _unrank_table
from ...format.tensor import NMQTensor
from ..base import Backend, check_path

ISA_ENV = "NMQ_CPU_ISA"
THREADS_ENV = "NMQ_THREADS"
INT32_MAX = 2**31 - 1

try:  # the extension is optional at import time: the backend reports why it cannot run
    from ... import _nmq_cpu as _ext

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    _ext = None
    _IMPORT_ERROR = f"the C++ extension nmq._nmq_cpu is not built or failed to load ({exc}); reinstall with 'pip install .'"

KIND_24, KIND_48, KIND_14, KIND_DENSE = 1, 2, 3, 4
ROWS, PAIR_K = 16, 8
_GEOMETRY = {KIND_24: (32, 12), KIND_48: (32, 16), KIND_14: (16, 8), KIND_DENSE: (64, 0)}
_ISA_APPLIED: str | None = None
_DIRECT_DTYPES = (torch.float32, torch.bfloat16)  # dtypes the kernels read and write as they are


def isa_levels() -> list[str]:
    """ISA levels this CPU and build can run, best first."""
    _require()
    return list(_ext.isa_levels())


def set_isa(level: str) -> None:
    """Force the instruction set the kernels use: ``avx512``, ``avx2`` or ``portable``."""
    _require()
    try:
        _ext.set_isa(level)
    except ValueError as exc:
        raise BackendError(str(exc)) from None


def get_isa() -> str:
    _require()
    _apply_env()
    return _ext.get_isa()


def set_threads(n: int) -> None:
    """Threads the kernels use, the calling thread included."""
    _require()
    if not isinstance(n, int) or n < 1:
        raise BackendError(f"thread count {n!r} is invalid; accepted: a positive integer")
    _ext.set_threads(n)


def get_threads() -> int:
    _require()
    return _ext.get_threads()


def _require() -> None:
    if _ext is None:
        raise BackendError(f"backend 'cpu' is not available here: {_IMPORT_ERROR}")


def _apply_env() -> None:
    """Apply NMQ_CPU_ISA whenever it changed since last looked at."""
    global _ISA_APPLIED
    want = os.environ.get(ISA_ENV, "")
    if want == (_ISA_APPLIED or ""):
        return
    if want:
        set_isa(want)
    else:
        _ext.set_isa(_ext.isa_levels()[0])
    _ISA_APPLIED = want


@dataclass(eq=False)
class CpuPacked:
    """A weight in the cpu backend's own layout (fast or generic)."""

    shape: tuple[int, int]
    groups: int
    fast: bool
    params: list[int]
    buffers: tuple[torch.Tensor, ...]
    max_abs_weight: int
    group: int
    handle: object = None  # the extension's FastWeight/GenericWeight over the buffers

    def __post_init__(self) -> None:
        if self.handle is None:
            cls = _ext.FastWeight if self.fast else _ext.GenericWeight
            self.handle = cls(*self.buffers, self.params)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "handle"}

    def __setstate__(self, state):
        self.__dict__.update(state, handle=None)
        self.__post_init__()

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def copy(self) -> "CpuPacked":
        """An independent copy, in its own (huge-page) memory like the original."""
        bufs = self.buffers[:4]
        own = _hugepage_copy(bufs)
        if own is bufs:  # small layouts stay where they are: clone them
            own = tuple(b.clone() for b in bufs)
        return CpuPacked(self.shape, self.groups, self.fast, list(self.params), own + self.buffers[4:],
                         self.max_abs_weight, self.group)

    @property
    def nbytes(self) -> int:
        """Bytes held by the layout (the rank table is shared per pattern and not counted)."""
        return sum(b.numel() * b.element_size() for b in self.buffers[:4])


class CpuBackend(Backend):
    name = "cpu"
    device = "cpu"

    def unavailable_reason(self) -> str | None:
        if _ext is None:
            return _IMPORT_ERROR
        want = os.environ.get(ISA_ENV)
        if want and want not in _ext.isa_levels():
            return f"{ISA_ENV}={want} is not available on this CPU; available: {', '.join(_ext.isa_levels())}"
        return None

    def prepack(self, t: NMQTensor) -> CpuPacked:
        _require()
        if isinstance(t, CpuPacked):
            return t
        for name in ("values", "meta", "scales", "zeros"):
            f = getattr(t, name)
            if f is not None and (f.dim() != 2 or f.shape[0] != t.out_features):
                t.validate()  # names the field and what is wrong
        for r0 in range(0, t.out_features, PACK_CHUNK_ROWS):  # row by row checks, bounded temporaries
            _rows(t, r0, min(t.out_features, r0 + PACK_CHUNK_ROWS)).validate()
        kind = fast_kind(t)
        return _pack_fast(t, kind) if kind else _pack_generic(t)

    def matmul(self, x: torch.Tensor, packed: CpuPacked, path: str = "w4a16") -> torch.Tensor:
        return _run(x, packed, path, partials=False)[0]

    def bind(self, packed: CpuPacked, path: str = "w4a16"):
        """A call ``x [tokens, in] -> y`` in ``x``'s dtype for this weight and path. Checked once here; per
        call only what can change (the input), and bf16 outputs are rounded in the extension, so a batch-1
        call costs a few microseconds of Python."""
        try:
            w4a8 = _check_call(packed, path)
        except BackendError:
            return super().bind(packed, path)  # matmul raises the same error at the call
        handle, k, out = packed.handle, packed.in_features, packed.out_features

        def run(x: torch.Tensor) -> torch.Tensor:
            if not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == k and x.device.type == "cpu"
                    and x.dtype in _DIRECT_DTYPES):
                return self.matmul(x, packed, path).to(x.dtype)  # other dtypes, or the precise error
            _apply_env()
            xa = x.contiguous()
            y = torch.empty(x.shape[0], out, dtype=x.dtype)
            bf16 = x.dtype == torch.bfloat16
            handle.run(xa.data_ptr(), bf16, x.shape[0], w4a8, y.data_ptr(), 0, bf16)
            return y

        return run

    def stack_rows(self, parts: list[CpuPacked]) -> tuple[CpuPacked, list[CpuPacked]] | None:
        """Fast layouts of one geometry whose row counts (but the last) are multiples of 16: the layouts are
        row-block major, so stacking is concatenation, and each part is a slice of the result."""
        if len(parts) < 2 or not all(isinstance(p, CpuPacked) and p.fast for p in parts):
            return None
        first = parts[0]
        if any([p.params[0]] + p.params[3:] != [first.params[0]] + first.params[3:] for p in parts):
            return None
        if any(p.out_features % ROWS for p in parts[:-1]):
            return None
        kind, _, _, kk, group, groups, steps, vbytes, mbytes, symmetric, k = first.params
        per_block = [-(-groups * steps // 2) * 64 if kind == KIND_24 else groups * steps * vbytes,
                     -(-groups * steps // 4) * QUAD24 if kind == KIND_24 else groups * steps * mbytes,
                     groups * ROWS, 0 if symmetric else groups * 8]
        spare = 16 if kind == KIND_24 else 0  # 2:4 metadata ends with 16 spare bytes
        stacked = []
        for j in range(4):
            chunks = [p.buffers[j][: p.params[2] * per_block[j]] for p in parts]
            stacked.append(torch.cat(chunks + ([torch.zeros(spare, dtype=torch.uint8)] if j == 1 else [])))
        bufs = _hugepage_copy(tuple(stacked))
        out = sum(p.out_features for p in parts)
        blocks = sum(p.params[2] for p in parts)
        whole = CpuPacked((out, k), groups, True, [kind, out, blocks] + first.params[3:], bufs,
                          max(p.max_abs_weight for p in parts), first.group)
        views, b0 = [], 0
        for p in parts:
            b1 = b0 + p.params[2]
            view = tuple(buf[b0 * n : b1 * n + (spare if j == 1 else 0)]
                         for j, (buf, n) in enumerate(zip(bufs, per_block)))
            views.append(CpuPacked(p.shape, p.groups, True, list(p.params), view, p.max_abs_weight, p.group))
            b0 = b1
        return whole, views


def partial_sums(x: torch.Tensor, packed: CpuPacked | NMQTensor) -> torch.Tensor:
    """The kernel's exact W4A8 partial sums, int32 ``[tokens, out, groups]``.

    Comparable bit for bit with :func:`nmq.backends.reference.partial_sums`.
    """
    if isinstance(packed, NMQTensor):
        packed = CpuBackend().prepack(packed)
    return _run(x, packed, "w4a8", partials=True)[1]


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


def _max_abs_weight(t: NMQTensor) -> int:
    return (1 << t.bits) - 1 if not t.symmetric else 1 << (t.bits - 1)


def _pack_rows(t: NMQTensor, kind: int, kk: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and metadata of the fast layout for all rows of t (a chunk of whole row blocks)."""
    out, n, m = t.out_features, t.pattern.n, t.pattern.m
    blocks = -(-out // ROWS)
    outp = blocks * ROWS
    if kind == KIND_24:
        return _pack24(t.codes().to(torch.uint8), t.group_positions().to(torch.uint8), out, blocks, pairs)
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


def _pack_fast(t: NMQTensor, kind: int) -> CpuPacked:
    out = t.out_features
    kk = -(-t.padded_in // PAIR_K) * PAIR_K
    group = kk if t.group_size == -1 else t.group
    groups = kk // group
    blocks = -(-out // ROWS)
    outp = blocks * ROWS
    pairs = kk // PAIR_K
    steps = group // PAIR_K
    vbytes, mbytes = _GEOMETRY[kind]

    # In chunks of rows: decoding the format's bit streams takes int32 and
    # int64 temporaries many times the packed size. Layouts are row-block
    # major, so the chunks' bytes simply follow each other.
    parts = [_pack_rows(_rows(t, r0, min(out, r0 + PACK_CHUNK_ROWS)), kind, kk, pairs)
             for r0 in range(0, out, PACK_CHUNK_ROWS)]
    vals = torch.cat([v.reshape(-1) for v, _ in parts])
    meta = torch.cat([mt.reshape(-1) for _, mt in parts])
    if kind == KIND_24:
        meta = torch.cat([meta, torch.zeros(16, dtype=torch.uint8)])  # kernels read 8-byte words

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
    params = [kind, out, blocks, kk, group, groups, steps, vbytes, mbytes, int(t.symmetric), t.in_features]
    bufs = (vals.contiguous().reshape(-1), meta.contiguous().reshape(-1), scales.reshape(-1).view(torch.int16),
            zeros.reshape(-1))
    return CpuPacked(tuple(t.shape), groups, True, params, _hugepage_copy(bufs), _max_abs_weight(t), group)


# 2:4 kept-position pairs inside a 4-group by 3-bit rank (colex order).
_PAIRS24 = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
# Byte order of a row's four kept codes in its 32-bit lane: code 0, 2, 1, 3, so
# that the lane read as two 16-bit words holds codes (0, 1) and, shifted right
# by 8 bits, codes (2, 3): the pairs a bf16 dot product instruction takes.
_SLOT_CODE = (0, 2, 1, 3)
QUAD24 = 48  # metadata bytes of 4 pair-steps of a 2:4 row block


PACK_CHUNK_ROWS = 1024  # a multiple of ROWS


def _rows(t: NMQTensor, r0: int, r1: int) -> NMQTensor:
    """Rows [r0, r1) of t, sharing its storage."""
    z = None if t.zeros is None else t.zeros[r0:r1]
    return NMQTensor((r1 - r0, t.in_features), t.pattern, t.bits, t.group_size, t.symmetric, t.metadata,
                     t.values[r0:r1], t.meta[r0:r1], t.scales[r0:r1], z)


def _pack24(codes: torch.Tensor, gpos: torch.Tensor, out: int, blocks: int, pairs: int):
    """The 2:4 fast layout (see kernels.h): codes [out, kept], positions [out, K/4, 2]."""
    outp = blocks * ROWS
    code = torch.zeros(outp, pairs, 4, dtype=torch.uint8)
    code.view(outp, -1)[:out, : codes.shape[1]] = codes
    rank = torch.zeros(outp, pairs * 2, dtype=torch.uint8)
    lut = torch.zeros(4, 4, dtype=torch.uint8)
    for r, (a, b) in enumerate(_PAIRS24):
        lut[a, b] = r
    rank[:out, : gpos.shape[1]] = lut[gpos[..., 0].long(), gpos[..., 1].long()]
    # Values: per two pair-steps 64 bytes, byte 4 * row + slot holding that
    # code of the first step in its low nibble and of the second in its high
    # one (a zero step pads an odd count).
    code = code[..., list(_SLOT_CODE)]
    if pairs % 2:
        code = torch.cat([code, torch.zeros(outp, 1, 4, dtype=torch.uint8)], dim=1)
    nib = code.reshape(blocks, ROWS, -1, 2, 4).permute(0, 2, 3, 1, 4).reshape(-1, 2, 64)  # [b, two-step, step, row, slot]
    vals = nib[:, 0] | (nib[:, 1] << 4)
    # Metadata: per row and pair-step 6 bits (rank of the first 4-group, then
    # of the second); per quad of pair-steps 8 row pairs x 48 bits, bit
    # 12 * step + 6 * row-in-pair.
    quads = -(-pairs // 4)
    field = torch.zeros(outp, quads * 4, dtype=torch.int64)
    rank = rank.reshape(outp, pairs, 2).long()
    field[:, :pairs] = rank[..., 0] | (rank[..., 1] << 3)
    field = field.reshape(blocks, 8, 2, quads, 4).permute(0, 3, 1, 4, 2).reshape(blocks, quads, 8, 8)
    word = (field << (6 * torch.arange(8))).sum(-1)  # 48 bits per row pair
    meta = ((word.unsqueeze(-1) >> (8 * torch.arange(6))) & 0xFF).to(torch.uint8).reshape(-1)
    return vals.reshape(-1), meta  # the caller appends 16 spare bytes (kernels read 8-byte words)


def _pack_generic(t: NMQTensor) -> CpuPacked:
    p = t.pattern
    if p.is_dense:
        meta_kind, width = 0, 0
        table = torch.zeros(0, dtype=torch.uint8)
    elif t.metadata == "index":
        meta_kind, width = 1, p.index_bits
        table = torch.zeros(0, dtype=torch.uint8)
    else:
        meta_kind, width = 2, p.rank_bits
        table = _rank_table(p.n, p.m)
    zeros = t.zeros.contiguous() if t.zeros is not None else torch.zeros(0, dtype=torch.uint8)
    params = [t.out_features, t.in_features, t.padded_in, p.n, p.m, t.bits, t.group, t.groups, meta_kind, width,
              int(t.symmetric)]
    bufs = _hugepage_copy((t.values.contiguous(), t.meta.contiguous(), t.scales.contiguous().view(torch.int16), zeros))
    return CpuPacked(tuple(t.shape), t.groups, False, params, bufs + (table,), _max_abs_weight(t), t.group)


HUGE_PAGE = 2 << 20


def _hugepage_copy(bufs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The buffers copied into one anonymous mapping that asks for transparent
    huge pages (Linux, layers of 2 MiB or more).

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
        _TABLES[key] = _unrank_table(n, m).to(torch.uint8).contiguous()
    return _TABLES[key]


def _check_x(x: torch.Tensor, packed: CpuPacked) -> torch.Tensor:
    k = packed.in_features
    if not isinstance(x, torch.Tensor):
        raise BackendError(f"activations are a {type(x).__name__}; accepted: a torch tensor [tokens, {k}]")
    if x.dim() != 2:
        raise BackendError(f"activations have shape {list(x.shape)}; accepted: [tokens, {k}]")
    if x.shape[1] != k:
        raise BackendError(f"activations have {x.shape[1]} features; the weight {list(packed.shape)} expects {k}")
    if not x.is_floating_point():
        raise BackendError(f"activations have dtype {x.dtype}; accepted: float32, float16 or bfloat16")
    if x.device.type != "cpu":
        raise BackendError(f"activations are on {x.device}; the cpu backend takes CPU tensors")
    return x


def _check_call(packed: CpuPacked, path: str) -> bool:
    """What a call on ``packed`` needs besides its input; whether it runs W4A8."""
    _require()
    check_path(path)
    if not isinstance(packed, CpuPacked):
        raise BackendError(f"the cpu backend got a {type(packed).__name__}; pass what CpuBackend.prepack returned")
    w4a8 = path == "w4a8"
    if w4a8 and packed.group * packed.max_abs_weight * 127 > INT32_MAX:
        raise BackendError(
            f"a W4A8 partial sum of weight {list(packed.shape)} could overflow int32 (group of {packed.group}); "
            "use a smaller group size")
    return w4a8


def _run(x: torch.Tensor, packed: CpuPacked, path: str, partials: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    w4a8 = _check_call(packed, path)
    x = _check_x(x, packed)
    _apply_env()
    bf16 = x.dtype == torch.bfloat16
    xa = x.contiguous() if bf16 else x.to(torch.float32).contiguous()
    tokens = x.shape[0]
    y = torch.empty(tokens, packed.out_features, dtype=torch.float32)
    p = torch.empty(tokens, packed.out_features, packed.groups, dtype=torch.int32) if partials else None
    # The extension takes addresses: xa, y and p are contiguous CPU tensors of
    # the shapes it expects, and stay alive for the call.
    packed.handle.run(xa.data_ptr(), bf16, tokens, w4a8, y.data_ptr(), p.data_ptr() if partials else 0, False)
    return y, p


__all__ = ["CpuBackend", "CpuPacked", "fast_kind", "get_isa", "get_threads", "isa_levels", "partial_sums",
           "set_isa", "set_threads"]
