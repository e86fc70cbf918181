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

FORMAT_NAME = "nmq"
FORMAT_VERSION = 1
HEADER_FIELDS = ("shape", "pattern", "bits", "group_size", "symmetric", "metadata", "padded_in")


@dataclass
class RawFile:
    """What one nmq file holds before its compressed tensors are built: header entry and fields per name."""

    path: Path
    compressed: dict[str, tuple[dict, dict[str, torch.Tensor]]] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)


def save_file(path: str | Path, compressed: dict, dense: dict[str, torch.Tensor]) -> None:
    """Write compressed tensors (NMQTensors: anything with ``header()`` and ``tensors()``) and dense ones to ``path`` atomically."""
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


def read_file(path: str | Path) -> RawFile:
    """Read an nmq safetensors file and check its description and checksums; FormatError names what is wrong."""
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
    result = RawFile(path)
    used: set[str] = set()
    for name, entry in desc["compressed"].items():
        where = f"{path}: tensor '{name}'"
        parts = {}
        for fname in _compressed_fields(entry, where):
            key = f"{name}.{fname}"
            if key not in raw:
                raise FormatError(f"{where}: field '{fname}' is missing from the file")
            _check_crc(raw[key], entry, fname, where)
            parts[fname] = raw[key]
            used.add(key)
        result.compressed[name] = (entry, parts)
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


def _check_crc(data: torch.Tensor, entry: dict, fname: str, where: str) -> None:
    want = entry["crc32"].get(fname) if isinstance(entry.get("crc32"), dict) else None
    if want != _crc(data):
        raise FormatError(f"{where}: field '{fname}' fails its checksum (the file is corrupted)")


def _crc(data: torch.Tensor) -> int:
    flat = data.contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
