"""NMQTensor: the canonical compressed weight (DESIGN.md section 2, format 1).

A logical weight ``W[out, in]`` with K = in the reduction dimension. K is
padded with zeros to whole quantization groups (or, for one group per row, to
whole M-groups); the original K is kept in ``shape``. Fields:

* ``values``  uint8 ``[out, ceil(kept * bits / 8)]``: codes of the kept
  weights, ascending K, packed little end first (:mod:`nmq.format.bitpack`);
* ``meta``    uint8 ``[out, ...]``: kept positions per M-group, ``index`` or
  ``rank`` encoded (:mod:`nmq.format.pattern`); no columns when N == M;
* ``scales``  fp16 ``[out, groups]``;
* ``zeros``   uint8 ``[out, ...]``: asymmetric zero codes, packed like values.

With ``bits == 16`` the kept values are not quantized: ``values`` holds their
16-bit float bit patterns (``value_dtype``, float16 or bfloat16) packed as
16-bit codes, there is one group per row, no zeros, and ``scales`` is
``[out, 0]`` (a pruned-only weight).

Build one with :func:`nmq.compress_weight`; this module only knows the layout.

>>> import torch, nmq
>>> t = nmq.compress_weight(torch.randn(8, 256), pattern="2:4", bits=4, group_size=128)
>>> t
NMQTensor(shape=(8, 256), pattern=2:4, bits=4, group_size=128, symmetric, metadata=rank)
>>> t.storage().bits_per_weight
2.875
>>> bool(((t.to_dense().reshape(8, 64, 4) != 0).sum(-1) <= 2).all())
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import FormatError, QuantError
from . import bitpack
from .file import save_file
from .pattern import Pattern, check_encoding
from .spec import (
    FLOAT_BITS,
    VALUE_DTYPES,
    QuantSpec,
    decode_floats,
    dequantize_groups,
    dtype_name,
)
from .storage import Storage


@dataclass(eq=False)
class NMQTensor:
    """An N:M sparse, group-quantized weight in the canonical packed form."""

    shape: tuple[int, int]
    pattern: Pattern
    bits: int
    group_size: int
    symmetric: bool
    metadata: str
    values: torch.Tensor
    meta: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    value_dtype: torch.dtype | None = None  # bits 16 only: the 16-bit float type of the kept values

    def __post_init__(self) -> None:
        # Checked at construction, not only by validate(): a tensor rebuilt from another's fields that drops
        # value_dtype would decode float bit patterns as integer codes.
        if (self.bits == FLOAT_BITS) != (self.value_dtype is not None):
            raise FormatError(f"NMQTensor: bits={self.bits} with value_dtype={self.value_dtype}; accepted: bits "
                              f"{FLOAT_BITS} with value_dtype {' or '.join(VALUE_DTYPES)}, other bits without one")

    # -- geometry -----------------------------------------------------------

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def padded_in(self) -> int:
        """K after padding to whole quantization groups (or whole M-groups)."""
        return padded_k(self.in_features, self.pattern, self.group_size)

    @property
    def group(self) -> int:
        """Effective quantization group length along K, in dense coordinates."""
        return self.padded_in if self.group_size == -1 else self.group_size

    @property
    def groups(self) -> int:
        """Quantization groups per row (none for float values)."""
        return 0 if self.is_float else self.padded_in // self.group

    @property
    def is_float(self) -> bool:
        """Whether the kept values are 16-bit floats (``bits == 16``) rather than integer codes."""
        return self.value_dtype is not None

    @property
    def kept_per_row(self) -> int:
        return self.padded_in // self.pattern.m * self.pattern.n

    @property
    def quant_spec(self) -> QuantSpec:
        self._integer_only("quant_spec")
        return QuantSpec(self.bits, self.group_size, self.symmetric)

    def _integer_only(self, what: str) -> None:
        if self.is_float:
            raise FormatError(f"{what}: this tensor holds {dtype_name(self.value_dtype)} values, not integer codes; "
                              "accepted: dequantized_values() or to_dense()")

    def __repr__(self) -> str:
        if self.is_float:
            return (f"NMQTensor(shape={tuple(self.shape)}, pattern={self.pattern}, bits={self.bits}, "
                    f"value_dtype={dtype_name(self.value_dtype)}, metadata={self.metadata})")
        sym = "symmetric" if self.symmetric else "asymmetric"
        return (
            f"NMQTensor(shape={tuple(self.shape)}, pattern={self.pattern}, bits={self.bits}, "
            f"group_size={self.group_size}, {sym}, metadata={self.metadata})"
        )

    # -- decoding -----------------------------------------------------------

    def codes(self) -> torch.Tensor:
        """int32 codes of the kept weights ``[out, kept_per_row]`` (integer tensors only)."""
        self._integer_only("codes()")
        return bitpack.unpack(self.values, self.bits, self.kept_per_row)

    def zero_codes(self) -> torch.Tensor:
        """int32 zero code of every group ``[out, groups]`` (``2**(bits-1)`` if symmetric; integer tensors only)."""
        self._integer_only("zero_codes()")
        if self.zeros is None:
            return torch.full((self.out_features, self.groups), 1 << (self.bits - 1), dtype=torch.int32)
        return bitpack.unpack(self.zeros, self.bits, self.groups)

    def group_positions(self) -> torch.Tensor:
        """Kept positions inside each M-group, int64 ``[out, padded_in // m, n]``, ascending."""
        p, out = self.pattern, self.out_features
        mgroups = self.padded_in // p.m
        if p.is_dense:
            return torch.arange(p.m).expand(out, mgroups, p.m)
        per_group, width = p.meta_codes_per_group(self.metadata)
        codes = bitpack.unpack(self.meta, width, mgroups * per_group)
        if self.metadata == "index":
            return codes.reshape(out, mgroups, p.n).long()
        return p.rank_to_positions(codes.reshape(out, mgroups))

    def positions(self) -> torch.Tensor:
        """Dense K column of every kept weight, int64 ``[out, kept_per_row]``."""
        pos = self.group_positions()
        base = torch.arange(pos.shape[1]).mul_(self.pattern.m).reshape(1, -1, 1)
        return (pos + base).reshape(self.out_features, self.kept_per_row)

    def dequantized_values(self) -> torch.Tensor:
        """fp32 value of every kept weight ``[out, kept_per_row]``."""
        if self.is_float:
            return decode_floats(bitpack.unpack(self.values, self.bits, self.kept_per_row), self.value_dtype)
        out, groups = self.out_features, self.groups
        codes = self.codes().reshape(out, groups, -1)
        zeros = None if self.zeros is None else self.zero_codes()
        return dequantize_groups(codes, self.scales, zeros, self.quant_spec).reshape(out, -1)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The logical weight ``[out, in]`` this tensor stands for."""
        dense = torch.zeros(self.out_features, self.padded_in, dtype=torch.float32)
        dense.scatter_(1, self.positions(), self.dequantized_values())
        return dense[:, : self.in_features].to(dtype)

    # -- re-encoding, accounting, persistence --------------------------------

    def with_metadata(self, encoding: str) -> NMQTensor:
        """The same tensor with its metadata in another encoding."""
        check_encoding(encoding)
        if encoding == self.metadata:
            return self
        return replace(self, metadata=encoding, meta=encode_meta(self.group_positions(), self.pattern, encoding))

    def storage(self) -> Storage:
        """Every stored bit, by field; padding is what exists only because of padding."""
        out, k, p = self.out_features, self.in_features, self.pattern
        real_mgroups = -(-k // p.m)
        useful = {
            "values": out * real_mgroups * p.n * self.bits,
            "meta": out * real_mgroups * p.meta_bits(self.metadata),
            "scales": self.scales.numel() * 16,
            "zeros": 0 if self.zeros is None else out * self.groups * self.bits,
        }
        stored = self.nbytes * 8
        shown = ("values",) if self.is_float else ("values", "scales")
        fields = {name: bits for name, bits in useful.items() if bits or name in shown}
        fields["padding"] = stored - sum(useful.values())
        return Storage(weights=out * k, fields=fields)

    @property
    def nbytes(self) -> int:
        """Bytes of all stored fields."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored fields by name (``zeros`` only when asymmetric)."""
        out = {"values": self.values, "meta": self.meta, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    def header(self) -> dict:
        """The JSON description stored beside the fields on disk (``value_dtype`` only for float values, so
        integer tensors are described as format 1 always described them)."""
        header = {
            "shape": list(self.shape),
            "pattern": str(self.pattern),
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "metadata": self.metadata,
            "padded_in": self.padded_in,
        }
        if self.is_float:
            header["value_dtype"] = dtype_name(self.value_dtype)
        return header

    def save(self, path: str | Path) -> None:
        """Write this tensor to a safetensors file, atomically."""
        save_file(path, compressed={"weight": self}, dense={})

    @classmethod
    def from_header(cls, entry: dict, parts: dict[str, torch.Tensor], where: str, check_fields: bool = True) -> NMQTensor:
        """The tensor a file's header ``entry`` and fields ``parts`` describe, validated (the fields' contents too
        unless ``check_fields`` is false); FormatError names the field."""
        try:
            pattern = Pattern.parse(entry["pattern"])
        except Exception as exc:
            raise FormatError(f"{where}: header field 'pattern' is invalid ({exc})") from None
        shape = entry["shape"]
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise FormatError(f"{where}: header field 'shape' is {shape!r}; expected [out, in] positive integers")
        if not isinstance(entry["symmetric"], bool):
            raise FormatError(f"{where}: header field 'symmetric' is {entry['symmetric']!r}; expected true or false")
        for key in ("bits", "group_size"):
            if not isinstance(entry[key], int) or isinstance(entry[key], bool):
                raise FormatError(f"{where}: header field '{key}' is {entry[key]!r}; expected an integer")
        value_dtype = entry.get("value_dtype")
        if (entry["bits"] == FLOAT_BITS) != (value_dtype is not None) or (
                value_dtype is not None and value_dtype not in VALUE_DTYPES):
            expected = " or ".join(map(repr, VALUE_DTYPES)) if entry["bits"] == FLOAT_BITS else "absent"
            raise FormatError(f"{where}: header field 'value_dtype' is {value_dtype!r} with bits {entry['bits']}; "
                              f"expected {expected}")
        t = cls(
            shape=(shape[0], shape[1]),
            pattern=pattern,
            bits=entry["bits"],
            group_size=entry["group_size"],
            symmetric=entry["symmetric"],
            metadata=entry["metadata"],
            values=parts["values"],
            meta=parts["meta"],
            scales=parts["scales"],
            zeros=parts.get("zeros"),
            value_dtype=None if value_dtype is None else VALUE_DTYPES[value_dtype],
        )
        if check_fields:
            t.validate(where)
        if entry["padded_in"] != t.padded_in:
            raise FormatError(f"{where}: header field 'padded_in' is {entry['padded_in']!r}; expected {t.padded_in}")
        return t

    def identical(self, other: NMQTensor) -> bool:
        """Same header and bit-identical fields."""
        if self.header() != other.header() or self.tensors().keys() != other.tensors().keys():
            return False
        return all(torch.equal(a, other.tensors()[n]) for n, a in self.tensors().items())

    def validate(self, where: str = "NMQTensor", chunk_rows: int = 0) -> NMQTensor:
        """Check every field against the header; raise FormatError naming the field.

        ``chunk_rows`` > 0 checks that many rows at a time (bounded temporaries).
        A tensor whose fields have not changed since it last passed (same
        storage, no in-place write: ``Tensor._version``) is not checked again,
        so a loaded checkpoint's layers are checked once, not at load and
        again at every backend's prepack.
        """
        key = self._fields_key()
        if getattr(self, "_valid_key", None) == key:
            return self
        if chunk_rows <= 0 or self.out_features <= chunk_rows or any(
                f is not None and (f.dim() != 2 or f.shape[0] != self.out_features)
                for f in (self.values, self.meta, self.scales, self.zeros)):
            validate(self, where)
        else:
            for r0 in range(0, self.out_features, chunk_rows):
                validate(self.slice_rows(r0, min(self.out_features, r0 + chunk_rows)), where)
        self._valid_key = key
        return self

    def _fields_key(self) -> tuple:
        fields = (self.values, self.meta, self.scales, self.zeros)
        header = (tuple(self.shape), self.pattern, self.bits, self.group_size, self.symmetric, self.metadata,
                  self.value_dtype)
        return (header, *((f.data_ptr(), f._version, tuple(f.shape), f.dtype) if isinstance(f, torch.Tensor)
                                     else repr(f) for f in fields))

    def slice_rows(self, r0: int, r1: int) -> NMQTensor:
        """Rows [r0, r1), sharing this tensor's storage."""
        z = None if self.zeros is None else self.zeros[r0:r1]
        return replace(self, shape=(r1 - r0, self.in_features), values=self.values[r0:r1], meta=self.meta[r0:r1],
                       scales=self.scales[r0:r1], zeros=z)


def padded_k(k: int, pattern: Pattern, group_size: int) -> int:
    unit = pattern.m if group_size == -1 else group_size
    return -(-k // unit) * unit


def check_group(pattern: Pattern, group_size: int) -> None:
    if group_size != -1 and (group_size < pattern.m or group_size % pattern.m):
        raise QuantError(
            f"group size {group_size} is not a multiple of M={pattern.m} (pattern {pattern}); "
            f"accepted: a positive multiple of {pattern.m}, or -1 for one group per row"
        )


def check_float_header(t: NMQTensor) -> None:
    """Raise FormatError unless ``t``'s header is that of float values: bits 16, a 16-bit float value_dtype, one
    group per row, symmetric (the only settings that mean anything without quantization)."""
    if t.bits != FLOAT_BITS or t.value_dtype not in VALUE_DTYPES.values():
        raise FormatError(f"bits={t.bits} with value_dtype={t.value_dtype}; accepted: bits {FLOAT_BITS} with "
                          f"{' or '.join(VALUE_DTYPES)}")
    if t.group_size != -1 or t.symmetric is not True:
        raise FormatError(f"16-bit float values with group_size={t.group_size}, symmetric={t.symmetric}; "
                          "accepted: group_size -1, symmetric (they have no scales or zeros)")


def encode_meta(group_positions: torch.Tensor, pattern: Pattern, encoding: str) -> torch.Tensor:
    """Pack ascending in-group positions ``[out, mgroups, n]`` as metadata bytes."""
    out, mgroups, _ = group_positions.shape
    if pattern.is_dense:
        return torch.zeros(out, 0, dtype=torch.uint8)
    per_group, width = pattern.meta_codes_per_group(encoding)
    if encoding == "index":
        codes = group_positions.reshape(out, mgroups * per_group)
    else:
        codes = pattern.positions_to_rank(group_positions)
    return bitpack.pack(codes, width)


def validate(t: NMQTensor, where: str) -> None:
    def fail(field: str, problem: str) -> None:
        raise FormatError(f"{where}: field '{field}' {problem}")

    shape = tuple(t.shape)
    if len(shape) != 2 or not all(isinstance(d, int) and d > 0 for d in shape):
        fail("shape", f"is {list(shape)}; accepted: two positive integers [out, in]")
    if not isinstance(t.pattern, Pattern):
        fail("pattern", f"is {t.pattern!r}; accepted: an N:M pattern")
    try:
        if t.value_dtype is not None or t.bits == FLOAT_BITS:
            check_float_header(t)
        else:
            QuantSpec(t.bits, t.group_size, bool(t.symmetric))
        check_group(t.pattern, t.group_size)
        check_encoding(t.metadata)
    except Exception as exc:  # re-raised with the location
        fail("header", f"is invalid: {exc}")
    out, p = t.out_features, t.pattern
    mgroups = t.padded_in // p.m
    per_group, width = p.meta_codes_per_group(t.metadata)
    expected = {
        "values": ((out, bitpack.packed_bytes(t.kept_per_row, t.bits)), torch.uint8),
        "meta": ((out, bitpack.packed_bytes(mgroups * per_group, width) if width else 0), torch.uint8),
        "scales": ((out, t.groups), torch.float16),
    }
    if not t.symmetric:
        expected["zeros"] = ((out, bitpack.packed_bytes(t.groups, t.bits)), torch.uint8)
    elif t.zeros is not None:
        fail("zeros", "is present but the tensor is symmetric")
    for name, (want_shape, want_dtype) in expected.items():
        got = getattr(t, name)
        if not isinstance(got, torch.Tensor):
            fail(name, "is missing")
        if got.dtype != want_dtype:
            fail(name, f"has dtype {got.dtype}; expected {want_dtype}")
        if tuple(got.shape) != want_shape:
            fail(name, f"has shape {list(got.shape)}; expected {list(want_shape)}")
    if not torch.isfinite(t.scales).all() or (t.scales < 0).any():
        fail("scales", "holds a negative, NaN or infinite scale")
    if t.is_float and not torch.isfinite(t.dequantized_values()).all():
        fail("values", f"holds a NaN or infinite {dtype_name(t.value_dtype)} value")
    if not p.is_dense:
        codes = bitpack.unpack(t.meta, width, mgroups * per_group)
        if t.metadata == "index":
            pos = codes.reshape(out, mgroups, p.n)
            if (pos >= p.m).any() or (pos[..., 1:] <= pos[..., :-1]).any():
                fail("meta", f"holds positions that are not ascending within 0..{p.m - 1}")
        elif (codes >= math.comb(p.m, p.n)).any():
            fail("meta", f"holds a rank outside 0..{math.comb(p.m, p.n) - 1} for pattern {p}")
