"""Bare weight matrices on disk: read ``.npy`` / ``.safetensors`` / ``.pt``, compress to an nmq file.

>>> import numpy as np, tempfile, nmq
>>> d = tempfile.mkdtemp()
>>> np.save(d + "/w.npy", np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32))
>>> out = compress_weight_file(d + "/w.npy", d + "/w.nmq.safetensors", nmq.Recipe())
>>> sorted(nmq.format.load.load_file(out).compressed)
['weight']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..compress.recipe import Recipe
from ..compress.weight import as_weight, compress_with
from ..errors import ModelError, NMQError
from ..files import check_new_output
from ..format.file import save_file

WEIGHT_SUFFIXES = (".npy", ".safetensors", ".pt", ".pth")


def is_weight_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix in WEIGHT_SUFFIXES


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a bare weight file by name (``weight`` for a lone array)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            return {"weight": torch.from_numpy(np.load(path, allow_pickle=False))}
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read as a weight file ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(obj, torch.Tensor):
        return {"weight": obj}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise ModelError(f"{path}: holds a {type(obj).__name__}; accepted: a tensor or a dict of tensors")


def compress_weight_file(src: str | Path, out: str | Path, recipe: Recipe, overwrite: bool = False) -> Path:
    """Compress every weight in ``src`` with ``recipe`` into one nmq safetensors file."""
    check_new_output(out, overwrite)
    weights = read_weights(src)
    if not weights:
        raise ModelError(f"{src}: holds no tensors")
    compressed = {}
    for name, w in weights.items():
        try:
            as_weight(w, name=f"{src}: tensor '{name}'")  # checked here to name the tensor in its errors
            compressed[name] = compress_with(w, recipe)  # as stored: a bfloat16 weight keeps bfloat16 values (bits 16)
        except NMQError as exc:
            raise type(exc)(str(exc) if str(src) in str(exc) else f"{src}: tensor '{name}': {exc}") from None
    save_file(out, compressed, {})
    return Path(out)
