"""Where dense models come from: a built-in name or a Hugging Face model directory."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import ModelError
from .builtin import BUILTIN_CONFIGS, builtin_model

LOAD_DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_source(src: str, progress: bool = True, dtype: str = "auto") -> tuple[torch.nn.Module, Path | None]:
    """A dense model from a built-in name or a Hugging Face model directory.

    Returns the model and the directory it came from (None for built-ins).
    ``dtype`` "auto" keeps the checkpoint's dtype, except that float16 loads
    as bfloat16: PyTorch's float16 matmuls on CPU are 15-200x slower than
    bfloat16 ones (no float16 dot product), which would stall calibration.
    """
    if dtype not in LOAD_DTYPES:
        raise ModelError(f"dtype {dtype!r}; accepted: {', '.join(LOAD_DTYPES)}")
    if src in BUILTIN_CONFIGS:
        model = builtin_model(src)
        return (model if dtype == "auto" else model.to(getattr(torch, dtype))), None
    path = Path(src)
    if not path.is_dir():
        raise ModelError(
            f"model source {src!r} is neither a directory nor a built-in model; "
            f"accepted: a Hugging Face model directory or one of {', '.join(BUILTIN_CONFIGS)}"
        )
    if (path / "nmq.json").exists():
        raise ModelError(f"{path} is already an nmq checkpoint; compress the original model instead")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; accepted: a Hugging Face model directory")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                     dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load as a Hugging Face causal LM ({' '.join(str(exc).split())[:300]})") from None
    if dtype == "auto" and next(model.parameters()).dtype == torch.float16:
        if progress:
            print(f"{path}: float16 weights loaded as bfloat16 (float16 matmuls are slow on CPU; "
                  "--dtype float32 keeps them exact at twice the memory)", file=sys.stderr)
        model = model.to(torch.bfloat16)
    return model.eval(), path
