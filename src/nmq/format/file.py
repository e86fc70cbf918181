"""On-disk form: safetensors with a JSON description in the header metadata.

One file holds compressed tensors (each as ``NAME.values``, ``NAME.meta``,
``NAME.scales`` and, if asymmetric, ``NAME.zeros``) and dense tensors (under
their own name). The header's ``nmq`` entry is JSON::

    {"format": "nmq", "version": 1,
     "compressed": {NAME: {shape, pattern, bits, group_size, symmetric,
                           metadata, padded_in, "crc32": {field: crc}}},
     "dense": {NAME: {"crc32": crc}}}

and ``nmq_crc32`` is the CRC-32 of that JSON text, so a flipped bit anywhere
in the file (header or data) is caught on load and reported with the file
and the field at fault.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_file
from ..errors import FormatError
from .pattern import Pattern
from .tensor import NMQTensor

FORMAT_NAME = "nmq"
FORMAT_VERSION = 1
HEADER_FIELDS = ("shape", "pattern", "bits", "group_size", "symmetric", "metadata", "padded_in")


@dataclass
class TensorFile:
    """What one nmq safetensors file holds."""

    compressed: dict[str, NMQTensor] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)


def save_file(path: str | Path, compressed: dict[str, NMQTensor], dense: dict[str, torch.Tensor]) -> None:
    """Write compressed and dense tensors to ``path`` atomically."""
    from safetensors.torch import save_file as st_save

    tensors: dict[str, torch.Tensor] = {}
    desc: dict = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "compressed": {}, "dense": {}}
    for name, t in compressed.items():
        entry = t.header()
        entry["crc32"] = {}
        for fname, data in t.tensors().items():
            data = data.contiguous()
            tensors[f"{name}.{fname}"] = data
            entry["crc32"][fname] = _crc(data)
        desc["compressed"][name] = entry
    for name, data in dense.items():
        if name in tensors:
            raise FormatError(f"tensor name {name!r} is used twice in {path}")
        data = data.detach().to("cpu").contiguous()
        tensors[name] = data
        desc["dense"][name] = {"crc32": _crc(data)}
    _unshare(tensors)
    text = json.dumps(desc, separators=(",", ":"), sort_keys=True)
    with atomic_file(path) as tmp:
        st_save(tensors, str(tmp), metadata={"nmq": text, "nmq_crc32": str(zlib.crc32(text.encode()))})


def _unshare(tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors that share memory with an earlier one (safetensors refuses shared storage)."""
    seen: set[int] = set()
    for name, data in tensors.items():
        ptr = data.untyped_storage().data_ptr()
        if ptr in seen and data.numel():
            tensors[name] = data.clone()
        seen.add(ptr)


def load_file(path: str | Path) -> TensorFile:
    """Read and validate an nmq safetensors file; FormatError names what is wrong."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = set(fh.keys())
            raw = {k: fh.get_tensor(k) for k in keys}
    except FormatError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise FormatError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
    desc = _read_description(path, meta)
    result = TensorFile()
    used: set[str] = set()
    for name, entry in desc["compressed"].items():
        where = f"{path}: tensor '{name}'"
        fields = _compressed_fields(entry, where)
        parts = {}
        for fname in fields:
            key = f"{name}.{fname}"
            if key not in raw:
                raise FormatError(f"{where}: field '{fname}' is missing from the file")
            _check_crc(raw[key], entry, fname, where)
            parts[fname] = raw[key]
            used.add(key)
        t = _tensor_from(entry, parts, where)
        result.compressed[name] = t.validate(where)
    for name, entry in desc["dense"].items():
        if name not in raw:
            raise FormatError(f"{path}: dense tensor '{name}' is missing from the file")
        if not isinstance(entry, dict) or "crc32" not in entry:
            raise FormatError(f"{path}: dense tensor '{name}' has no checksum in the header")
        _check_crc(raw[name], {"crc32": {"data": entry["crc32"]}}, "data", f"{path}: dense tensor '{name}'")
        result.dense[name] = raw[name]
        used.add(name)
    extra = keys - used
    if extra:
        raise FormatError(f"{path}: tensors {sorted(extra)[:3]} are not described in the nmq header")
    return result


def load_tensor(path: str | Path) -> NMQTensor:
    """Load the single compressed weight written by ``NMQTensor.save``."""
    f = load_file(path)
    if len(f.compressed) != 1:
        raise FormatError(
            f"{path}: holds {len(f.compressed)} compressed tensors; load_tensor reads a file with exactly one "
            "(use nmq.load_model for a checkpoint directory)"
        )
    return next(iter(f.compressed.values()))


def _read_description(path: Path, meta: dict) -> dict:
    text = meta.get("nmq")
    if text is None:
        raise FormatError(f"{path}: no 'nmq' description in the safetensors header; not an nmq file")
    if meta.get("nmq_crc32") != str(zlib.crc32(text.encode())):
        raise FormatError(f"{path}: the nmq header fails its checksum (the file is corrupted)")
    try:
        desc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: the nmq header is not valid JSON ({exc})") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: header field 'format' is {desc.get('format')!r}; expected 'nmq'")
    version = desc.get("version")
    if not isinstance(version, int) or version < 1:
        raise FormatError(f"{path}: header field 'version' is {version!r}; expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{path}: written in nmq format version {version}; this nmq reads versions up to {FORMAT_VERSION} "
            "(upgrade nmq)"
        )
    for section in ("compressed", "dense"):
        if not isinstance(desc.get(section), dict):
            raise FormatError(f"{path}: header field '{section}' is missing or not a mapping")
    return desc


def _compressed_fields(entry: dict, where: str) -> list[str]:
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: header entry is not a mapping")
    for key in HEADER_FIELDS + ("crc32",):
        if key not in entry:
            raise FormatError(f"{where}: header field '{key}' is missing")
    return ["values", "meta", "scales"] + ([] if entry["symmetric"] else ["zeros"])


def _tensor_from(entry: dict, parts: dict, where: str) -> NMQTensor:
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
    t = NMQTensor(
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
    )
    t.validate(where)
    if entry["padded_in"] != t.padded_in:
        raise FormatError(f"{where}: header field 'padded_in' is {entry['padded_in']!r}; expected {t.padded_in}")
    return t


def _check_crc(data: torch.Tensor, entry: dict, fname: str, where: str) -> None:
    want = entry["crc32"].get(fname) if isinstance(entry.get("crc32"), dict) else None
    if want != _crc(data):
        raise FormatError(f"{where}: field '{fname}' fails its checksum (the file is corrupted)")


def _crc(data: torch.Tensor) -> int:
    flat = data.contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
