"""Reading nmq files back as NMQTensors (and the dense tensors beside them).

>>> import torch, nmq, tempfile, os
>>> t = nmq.compress_weight(torch.randn(8, 64), pattern="2:4", bits=4, group_size=32)
>>> path = os.path.join(tempfile.mkdtemp(), "w.nmq.safetensors")
>>> t.save(path)
>>> load_tensor(path).identical(t)
True
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FormatError
from .file import read_file
from .tensor import NMQTensor


@dataclass
class TensorFile:
    """What one nmq safetensors file holds."""

    compressed: dict[str, NMQTensor] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)


def load_file(path: str | Path, data: bool = True) -> TensorFile:
    """Read and validate an nmq safetensors file; FormatError names what is wrong.

    ``data=False``: the header only, fields as meta tensors (:func:`nmq.format.file.read_file`), unvalidated.
    """
    raw = read_file(path, data=data)

    def build(item):
        name, (entry, parts) = item
        return name, NMQTensor.from_header(entry, parts, f"{raw.path}: tensor '{name}'", check_fields=data)

    # Validation unpacks every field, mostly in NumPy, which releases the GIL: a thread per core.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        compressed = dict(pool.map(build, raw.compressed.items()))
    return TensorFile(compressed, raw.dense)


def load_tensor(path: str | Path) -> NMQTensor:
    """Load the single compressed weight written by ``NMQTensor.save``."""
    f = load_file(path)
    if len(f.compressed) != 1:
        raise FormatError(
            f"{path}: holds {len(f.compressed)} compressed tensors; load_tensor reads a file with exactly one "
            "(use nmq.load_model for a checkpoint directory)"
        )
    return next(iter(f.compressed.values()))
