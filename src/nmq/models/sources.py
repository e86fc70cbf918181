"""Where dense models come from: a built-in name, a Hugging Face model directory or a GGUF file."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import ModelError
from .builtin import BUILTIN_CONFIGS, builtin_model
from .gguf import (
    GGUF_BUILTINS,
    builtin_gguf_path,
    converted_directory,
    is_gguf,
    load_gguf,
)

LOAD_DTYPES = ("auto", "float32", "bfloat16", "float16")
BUILTIN_NAMES = (*BUILTIN_CONFIGS, *GGUF_BUILTINS)


def load_source(src: str, progress: bool = True, dtype: str = "auto") -> tuple[torch.nn.Module, Path | None]:
    """A dense model from a built-in name, a Hugging Face model directory or a GGUF file.

    Returns the model and where it came from: the directory (for a GGUF file,
    the directory it was converted to in nmq's cache, else the file itself: its
    tokenizer is inside), or None for the byte-level built-ins.
    ``dtype`` "auto" keeps the checkpoint's dtype (fp32 for a GGUF file's
    dequantized tensors), except that float16 loads as bfloat16: PyTorch's
    float16 matmuls on CPU are 15-200x slower than bfloat16 ones (no float16
    dot product), which would stall calibration.
    """
    if dtype not in LOAD_DTYPES:
        raise ModelError(f"dtype {dtype!r}; accepted: {', '.join(LOAD_DTYPES)}")
    if src in BUILTIN_CONFIGS:
        model = builtin_model(src)
        return (model if dtype == "auto" else model.to(getattr(torch, dtype))), None
    if src in GGUF_BUILTINS or is_gguf(src):
        path = builtin_gguf_path(src) if src in GGUF_BUILTINS else Path(src)
        want = torch.float32 if dtype == "auto" else getattr(torch, dtype)
        directory = converted_directory(path, progress) if path.is_file() else None
        if directory is None:
            return load_gguf(path, want, progress), path
        return _from_pretrained(directory, want, progress), directory
    path = Path(src)
    if not path.is_dir():
        raise ModelError(
            f"model source {src!r} is neither a directory nor a built-in model; "
            f"accepted: a Hugging Face model directory, a .gguf file or one of {', '.join(BUILTIN_NAMES)}"
        )
    if (path / "nmq.json").exists():
        raise ModelError(f"{path} is already an nmq checkpoint; compress the original model instead")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; accepted: a Hugging Face model directory")
    check_shards(path)
    model = _from_pretrained(path, "auto" if dtype == "auto" else getattr(torch, dtype), progress)
    if dtype == "auto" and next(model.parameters()).dtype == torch.float16:
        if progress:
            print(f"{path}: float16 weights loaded as bfloat16 (float16 matmuls are slow on CPU; "
                  "--dtype float32 keeps them exact at twice the memory)", file=sys.stderr)
        # The weights only: buffers computed at init (rotary frequencies) stay as precise as a bfloat16 load makes them.
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16  # the checkpoint's config says what it computes in
    return model, path


def _from_pretrained(path: Path, dtype: torch.dtype | str, progress: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load as a Hugging Face causal LM ({' '.join(str(exc).split())[:300]})") from None
    return model.eval()


def check_shards(path: Path) -> None:
    """Every shard a sharded checkpoint's index names is there (else one line naming the first missing one)."""
    import json

    for index in sorted(path.glob("*.safetensors.index.json")) + sorted(path.glob("*.bin.index.json")):
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index}: not a shard index (a JSON object with a 'weight_map')") from None
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise ModelError(f"{path}: shard {missing[0]} is missing ({len(missing)} of the {len(files)} that "
                             f"{index.name} lists)")
