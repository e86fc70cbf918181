"""On-disk form: safetensors with a JSON description in the header metadata.

One file holds compressed tensors (each as ``NAME.values``, ``NAME.meta``,
``NAME.scales`` and, if asymmetric, ``NAME.zeros``) and dense tensors (under
their own name). The header's ``nmq`` entry is JSON::

    {"format": "nmq", "version": 1,
     "compressed": {NAME: {shape, pattern, bits, group_size, symmetric,
                           metadata, padded_in, "crc32": {field: crc}}},
     "dense": {NAME: {"crc32": crc}}}

(a tensor of 16-bit float values, ``bits`` 16, adds ``value_dtype``; the
field is optional, so files written before it existed read as they did)

and ``nmq_crc32`` is the CRC-32 of that JSON text, so a flipped bit anywhere
in the file (header or data) is caught on load and reported with the file
and the field at fault.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FormatError
from ..files import atomic_file

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
    with TensorFileWriter(path) as writer:
        for name, t in compressed.items():
            writer.add_compressed(name, t)
        for name, data in dense.items():
            writer.add_dense(name, data)


# safetensors' dtype names
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


class TensorFileWriter:
    """An nmq file written tensor by tensor: memory holds one tensor at a time, whatever the file's size.

    The safetensors header (with the nmq description and its checksums) comes
    first in the file but is known only at the end, so the tensors' bytes go
    to a temporary file beside ``path`` as they arrive, and :meth:`close`
    writes the header and then copies them after it; the file appears under
    its name only when complete (an interrupted run leaves nothing that loads).

    >>> import tempfile, torch, nmq
    >>> from nmq.format.load import load_file
    >>> path = tempfile.mkdtemp() + "/w.safetensors"
    >>> with TensorFileWriter(path) as w:
    ...     w.add_compressed("layer", nmq.compress_weight(torch.randn(8, 64), pattern="2:4", group_size=64))
    ...     w.add_dense("norm", torch.ones(64))
    >>> sorted(load_file(path).compressed), sorted(load_file(path).dense)
    (['layer'], ['norm'])
    """

    def __init__(self, path: str | Path, body: str | Path | None = None, state: dict | None = None) -> None:
        """``body``: keep the tensors' bytes in that file (kept on :meth:`abort`), so that a writer made again
        with the :meth:`state` saved after some tensors continues from there (its later bytes are dropped)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._body_path = None if body is None else Path(body)
        self._table: dict[str, dict] = {}
        self._offset = 0
        self.desc: dict = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "compressed": {}, "dense": {}}
        if self._body_path is None:
            self._body = tempfile.NamedTemporaryFile(prefix=f".{self.path.name}.", suffix=".body", dir=self.path.parent)
        elif state is None:
            self._body = open(self._body_path, "w+b")  # noqa: SIM115 - closed by close() or abort()
        else:
            self._body = open(self._body_path, "r+b")  # noqa: SIM115 - closed by close() or abort()
            self._table, self._offset, self.desc = state["table"], state["offset"], state["desc"]
            self._body.truncate(self._offset)
            self._body.seek(self._offset)

    def state(self) -> dict:
        """What a writer made again over the same body needs to continue: the bytes so far are on disk."""
        self._body.flush()
        os.fsync(self._body.fileno())
        return {"table": self._table, "offset": self._offset, "desc": self.desc}

    def add_compressed(self, name: str, t) -> None:
        entry = t.header()
        entry["crc32"] = {}
        for fname, data in t.tensors().items():
            entry["crc32"][fname] = self._write(f"{name}.{fname}", data)
        self.desc["compressed"][name] = entry

    def add_dense(self, name: str, data: torch.Tensor) -> None:
        self.desc["dense"][name] = {"crc32": self._write(name, data)}

    def _write(self, key: str, data: torch.Tensor) -> int:
        if key in self._table:
            raise FormatError(f"tensor name {key!r} is used twice in {self.path}")
        data = data.detach().to("cpu").contiguous()
        if data.dtype not in SAFETENSORS_DTYPES:
            raise FormatError(f"tensor {key!r}: dtype {data.dtype} cannot be stored; accepted: "
                              f"{', '.join(str(d).removeprefix('torch.') for d in SAFETENSORS_DTYPES)}")
        raw = data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b""
        self._body.write(raw)
        end = self._offset + data.numel() * data.element_size()
        self._table[key] = {"dtype": SAFETENSORS_DTYPES[data.dtype], "shape": list(data.shape), "data_offsets": [self._offset, end]}
        self._offset = end
        return _crc(data)

    def close(self) -> None:
        """Write the file: header, then the tensors' bytes."""
        text = json.dumps(self.desc, separators=(",", ":"), sort_keys=True)
        header = {"__metadata__": {"nmq": text, "nmq_crc32": str(zlib.crc32(text.encode()))}, **self._table}
        head = json.dumps(header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # the tensors' bytes start 8-byte aligned, as safetensors writes them
        self._body.flush()
        self._body.seek(0)
        with atomic_file(self.path) as tmp, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(head)))
            out.write(head)
            shutil.copyfileobj(self._body, out, 16 << 20)
        self._body.close()
        if self._body_path is not None:
            self._body_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._body.close()

    def __enter__(self) -> TensorFileWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def unshare_storage(tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors that share memory with an earlier one (safetensors' own writer refuses shared storage)."""
    seen: set[int] = set()
    for name, data in tensors.items():
        ptr = data.untyped_storage().data_ptr()
        if ptr in seen and data.numel():
            tensors[name] = data.clone()
        seen.add(ptr)


def read_file(path: str | Path, data: bool = True) -> RawFile:
    """Read an nmq safetensors file and check its description and checksums; FormatError names what is wrong.

    With ``data=False`` only the header is read: the fields are meta tensors
    of the stored shapes and dtypes (what storage accounting needs, without
    reading gigabytes), and only the description's own checksum is checked.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        if data:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                keys = set(fh.keys())
                raw = {k: fh.get_tensor(k) for k in keys}
        else:
            meta, raw = _read_header(path)
            keys = set(raw)
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
            if data:
                _check_crc(raw[key], entry, fname, where)
            parts[fname] = raw[key]
            used.add(key)
        result.compressed[name] = (entry, parts)
    for name, entry in desc["dense"].items():
        if name not in raw:
            raise FormatError(f"{path}: dense tensor '{name}' is missing from the file")
        if not isinstance(entry, dict) or "crc32" not in entry:
            raise FormatError(f"{path}: dense tensor '{name}' has no checksum in the header")
        if data:
            _check_crc(raw[name], {"crc32": {"data": entry["crc32"]}}, "data", f"{path}: dense tensor '{name}'")
        result.dense[name] = raw[name]
        used.add(name)
    extra = keys - used
    if extra:
        raise FormatError(f"{path}: tensors {sorted(extra)[:3]} are not described in the nmq header")
    return result


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """Where a safetensors file's tensor bytes start, and its header (``__metadata__`` included); the data
    offsets are checked against the file's size, so a truncated file is one FormatError."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        try:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n)) if 8 + n <= size else None
        except (struct.error, ValueError) as exc:
            raise FormatError(f"{path}: not a safetensors file ({_one_line(exc)})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
    dtypes = set(SAFETENSORS_DTYPES.values())
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] not in dtypes:
            raise FormatError(f"{path}: tensor {name!r} has dtype {e['dtype']}; accepted: {', '.join(sorted(dtypes))}")
        if 8 + n + e["data_offsets"][1] > size:
            raise FormatError(f"{path}: truncated: tensor {name!r} ends at byte {8 + n + e['data_offsets'][1]}, "
                              f"the file has {size}")
    return 8 + n, header


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name."""
    return next(d for d, n in SAFETENSORS_DTYPES.items() if n == name)


def _read_header(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A safetensors file's metadata and its tensors as meta tensors (shapes and dtypes, no data)."""
    _, header = read_safetensors_header(path)
    meta = header.pop("__metadata__", None) or {}
    return meta, {k: torch.empty(e["shape"], dtype=dtype_of(e["dtype"]), device="meta") for k, e in header.items()}


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
