"""Models: where they come from, and compressing their linear layers.

>>> import nmq
>>> model = nmq.builtin_model()
>>> model = nmq.compress_model(model, nmq.Recipe(pattern="2:4", bits=4, group_size=128), progress=False)
>>> type(model.model.layers[0].mlp.down_proj).__name__, type(model.lm_head).__name__
('NMQLinear', 'Linear')
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .builtin import BUILTIN_CONFIGS, builtin_model
from .errors import ModelError, NMQError
from .linear import NMQLinear
from .progress import progress as progress_bar
from .recipe import Recipe


def target_layers(model: torch.nn.Module, recipe: Recipe) -> list[str]:
    """Names of the ``nn.Linear`` modules the recipe compresses, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and recipe.selects(n)]


def compress_model(model: torch.nn.Module, recipe: Recipe | dict | None = None, progress: bool = True,
                   calibration=None) -> torch.nn.Module:
    """Replace the selected ``nn.Linear`` layers of ``model`` by NMQLinear, in place; returns ``model``.

    Calibrated methods (wanda, sparsegpt, gptq) run block by block over
    ``calibration``: token ids ``[samples, seq_len]``, or a
    :class:`nmq.calibrate.Calibration` (default: 128 x 512 tokens of the
    standard library's source, for byte-level models).
    """
    if recipe is None:
        recipe = Recipe()
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    if recipe.needs_calibration:
        from .calibrate import Calibration, calibration_tokens, compress_model_calibrated

        if not isinstance(calibration, torch.Tensor):
            if getattr(model.config, "vocab_size", None) != 256:
                raise ModelError(f"method {recipe.method!r} needs calibration token ids for this model's tokenizer; "
                                 "pass calibration=tensor [samples, seq_len] (or use nmq compress --calibration)")
            calibration = calibration_tokens(calibration or Calibration())
        return compress_model_calibrated(model, recipe, calibration, progress=progress)
    names = target_layers(model, recipe)
    if not names:
        raise ModelError(f"no linear layer matches targets {recipe.targets!r} outside ignore {list(recipe.ignore)}")
    for name in progress_bar(names, total=len(names), desc="compress", enabled=progress):
        linear = model.get_submodule(name)
        try:
            layer = NMQLinear.from_linear(linear, **recipe.compress_kwargs())
        except NMQError as exc:
            raise type(exc)(f"layer {name}: {exc}") from None
        set_submodule(model, name, layer)
    model.nmq_recipe = recipe
    return model


def set_submodule(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


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
