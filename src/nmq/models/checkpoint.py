"""Checkpoint directories: write a compressed model, load it back as a working model.

A checkpoint is a directory holding ``config.json`` (the model's own),
tokenizer files if the source had any, ``model.nmq.safetensors`` (compressed
and dense tensors, :mod:`nmq.format.file`) and ``nmq.json`` (the recipe and
what was compressed). It is written under a temporary name and renamed into
place, so a failed run leaves nothing that loads. ``config.json`` carries a
``quantization_config`` (``quant_method`` ``"nmq"``), as GPTQ and AWQ
checkpoints do, so that ``transformers.AutoModelForCausalLM.from_pretrained``
loads it once nmq is imported (:mod:`nmq.models.hf_quantizer`).

>>> import nmq, tempfile, torch
>>> model = nmq.compress_model(nmq.builtin_model(), progress=False)
>>> out = tempfile.mkdtemp() + "/ckpt"
>>> nmq.save_checkpoint(model, out).name
'ckpt'
>>> loaded = nmq.load_model(out)
>>> ids = torch.tensor([[72, 105]])
>>> torch.allclose(model(ids).logits, loaded(ids).logits)
True
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..compress.recipe import Recipe
from ..errors import FormatError, ModelError
from ..files import atomic_dir
from ..format.file import save_file
from ..format.load import TensorFile, load_file
from ..runtime.linear import NMQLinear
from ..runtime.modules import set_submodule
from ..runtime.text import HFTokenizer
from .gguf import is_gguf

TENSORS_FILE = "model.nmq.safetensors"
RECORD_FILE = "nmq.json"
RECORD_FORMAT = "nmq-checkpoint"
RECORD_VERSION = 1
QUANT_METHOD = "nmq"  # config.json's quantization_config.quant_method
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)


def save_checkpoint(
    model: torch.nn.Module, out_dir: str | Path, source_dir: str | Path | None = None,
    source: str | None = None, overwrite: bool = False, dense_dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (with NMQLinear layers) as a checkpoint directory.

    ``dense_dtype`` stores the dense floating-point matrices (embeddings, an
    uncompressed ``lm_head``) in that dtype; vectors (norms, biases) keep
    theirs, being a rounding error of the size and not of the accuracy.
    ``load_model`` casts every tensor back to the dtype the model computes in.
    """
    compressed = {n: m.nmq_weight for n, m in model.named_modules() if isinstance(m, NMQLinear)}
    released = [n for n, t in compressed.items() if t is None]
    if released:
        raise ModelError(f"layer {released[0]} kept only its packed form (release_source); "
                       "save the model before releasing, or reload it")
    dense: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:  # tied weights (e.g. lm_head and embeddings) are stored once
            tied[name] = seen[key]
            continue
        seen[key] = name
        if dense_dtype is not None and tensor.dim() >= 2 and tensor.is_floating_point():
            tensor = tensor.to(dense_dtype)
        dense[name] = tensor
    # Non-persistent buffers are outside the state dict. Those of modules without parameters (rotary tables) are
    # rebuilt from the config at load (materialize_buffers); the others (Gemma's embed_scale, beside the
    # embedding's weight) are stored, under their own names.
    buffers = stored_buffers(model)
    for name in buffers:
        dense[name] = model.get_buffer(name)
    recipe = getattr(model, "nmq_recipe", None)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.config.to_json_file(str(tmp / "config.json"))
        save_file(tmp / TENSORS_FILE, compressed, dense)
        finish_checkpoint(tmp, recipe, source, source_dir, sorted(compressed), tied, buffers)
    return Path(out_dir)


def stored_buffers(model: torch.nn.Module) -> list[str]:
    """The non-persistent buffers a checkpoint stores: those of modules with parameters (Gemma's embed_scale).
    Those of modules without any (rotary tables) are rebuilt from the config at load (materialize_buffers)."""
    state = model.state_dict()
    return sorted(n for n, _ in model.named_buffers() if n not in state and
                  any(True for _ in model.get_submodule(n.rpartition(".")[0]).parameters(recurse=False)))


def finish_checkpoint(tmp: Path, recipe: Recipe | None, source: str | None, source_dir: str | Path | None,
                      compressed: list[str], tied: dict[str, str], buffers: list[str]) -> None:
    """The tokenizer files and ``nmq.json`` of a checkpoint being written in ``tmp`` (config and tensors there)."""
    if source_dir is not None and is_gguf(source_dir):
        HFTokenizer(source_dir).tok.save_pretrained(str(tmp))
    elif source_dir is not None:
        for fname in TOKENIZER_FILES:
            if (Path(source_dir) / fname).is_file():
                shutil.copy2(Path(source_dir) / fname, tmp / fname)
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "recipe": recipe.to_dict() if isinstance(recipe, Recipe) else None,
        "source": source,
        "tensors": TENSORS_FILE,
        "compressed_layers": compressed,
        "tied": tied,
        "buffers": buffers,
    }
    (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = quantization_config(recipe)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def quantization_config(recipe: Recipe | None) -> dict:
    """config.json's ``quantization_config`` for a checkpoint made with ``recipe``: what Hugging Face tools
    read to learn how the model is quantized. ``nmq.json`` stays the record nmq itself loads from."""
    config = {"quant_method": QUANT_METHOD}
    if isinstance(recipe, Recipe):
        config.update(recipe.to_dict())
    config["format_version"] = RECORD_VERSION
    return config


def read_record(ckpt: str | Path) -> dict:
    """The validated ``nmq.json`` of a checkpoint directory."""
    ckpt = Path(ckpt)
    path = ckpt / RECORD_FILE
    if not ckpt.is_dir():
        raise FormatError(f"{ckpt}: not a directory; accepted: an nmq checkpoint directory")
    if not path.is_file():
        raise FormatError(f"{ckpt}: no {RECORD_FILE}; not an nmq checkpoint (made by 'nmq compress')")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise FormatError(f"{path}: field 'format' is not {RECORD_FORMAT!r}")
    version = record.get("version")
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise FormatError(f"{path}: field 'version' is {version!r}; this nmq reads versions up to {RECORD_VERSION} (upgrade nmq)")
    for key, kind in (("tensors", str), ("compressed_layers", list), ("tied", dict)):
        if not isinstance(record.get(key), kind):
            raise FormatError(f"{path}: field '{key}' is missing or not a {kind.__name__}")
    if Path(record["tensors"]).name != record["tensors"]:
        raise FormatError(f"{path}: field 'tensors' must name a file inside the checkpoint")
    return record


def read_checkpoint(ckpt: str | Path) -> tuple[dict, TensorFile, dict]:
    """The validated record, the tensors and the config of the checkpoint directory ``ckpt``."""
    ckpt = Path(ckpt)
    record = read_record(ckpt)
    if not (ckpt / "config.json").is_file():
        raise FormatError(f"{ckpt}: config.json is missing")
    tensors = load_file(ckpt / record["tensors"])
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{ckpt}/config.json: not valid JSON ({exc})") from None
    return record, tensors, config


def load_model(ckpt: str | Path, backend: str = "auto", path: str = "w4a16") -> torch.nn.Module:
    """Load a checkpoint directory as a working model (``generate`` works).

    The model skeleton is built without allocating dense weights, so loading
    never holds a dense copy of a compressed layer.
    """
    ckpt = Path(ckpt)
    record = read_record(ckpt)
    if not (ckpt / "config.json").is_file():
        raise FormatError(f"{ckpt}: config.json is missing")
    # The skeleton (transformers' imports, mostly Python) is built while the tensors are read and checked
    # (mostly NumPy and I/O, which release the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(skeleton, ckpt)
        tensors = load_file(ckpt / record["tensors"])
        model = building.result()
    return fill_model(model, record, tensors, ckpt, backend=backend, path=path)


def fill_model(model: torch.nn.Module, record: dict, tensors: TensorFile, ckpt: str | Path,
               backend: str = "auto", path: str = "w4a16") -> torch.nn.Module:
    """Put a checkpoint's tensors (its validated ``record`` and tensor file) into ``model``, a skeleton of its
    config (on the meta device, or already holding weights, which the checkpoint's replace): the compressed
    layers become NMQLinear, every other tensor is the checkpoint's, cast to the dtype the model computes in."""
    if sorted(tensors.compressed) != sorted(record["compressed_layers"]):
        raise FormatError(f"{ckpt}: {RECORD_FILE} lists layers that {record['tensors']} does not hold")
    dense = place_compressed(model, tensors, ckpt, backend=backend, path=path)
    # Before tying, so that tied weights stay one tensor.
    wanted = model.state_dict()  # on a skeleton, meta tensors: the dtype the model computes in, for free
    for name, t in dense.items():
        if name in wanted and t.is_floating_point() and wanted[name].dtype != t.dtype:
            dense[name] = t.to(wanted[name].dtype)
    for name, source in record["tied"].items():
        if source in dense:
            dense[name] = dense[source]
    buffers = {name: dense.pop(name) for name in record.get("buffers", []) if name in dense}
    result = model.load_state_dict(dense, strict=False, assign=True)
    if result.unexpected_keys:
        raise FormatError(f"{ckpt}: tensors {result.unexpected_keys[:3]} do not belong to the model")
    materialize_buffers(model)
    for name, value in buffers.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        if getattr(module, attr).is_meta:  # modules rebuilt above computed their own
            setattr(module, attr, value)  # a registered buffer's name: the buffer is replaced
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise FormatError(f"{ckpt}: the checkpoint lacks {missing[:3]}")
    if record["recipe"] is not None:
        model.nmq_recipe = Recipe.from_dict(record["recipe"])
    # Layers pack independently and mostly in NumPy, which releases the GIL: a thread per core.
    layers = [m for m in model.modules() if isinstance(m, NMQLinear)]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(NMQLinear.prepack, layers))
    return model.eval()


def place_compressed(model: torch.nn.Module, tensors: TensorFile, ckpt: str | Path, backend: str = "auto",
                     path: str = "w4a16") -> dict[str, torch.Tensor]:
    """Replace each compressed layer of ``model`` by an NMQLinear of its tensor (and bias); the dense tensors
    left to load. A layer may be an ``nn.Linear`` or an NMQLinear of the same shape (a placeholder built from
    the file's header, whose fields are meta tensors)."""
    dense = dict(tensors.dense)
    for name, t in tensors.compressed.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise FormatError(f"{ckpt}: compressed layer {name!r} does not exist in the model") from None
        if not isinstance(old, (torch.nn.Linear, NMQLinear)) or (old.out_features, old.in_features) != tuple(t.shape):
            raise FormatError(f"{ckpt}: compressed layer {name!r} {list(t.shape)} does not match the model's {old}")
        set_submodule(model, name, NMQLinear(t, dense.pop(f"{name}.bias", None), backend=backend, path=path))
    return dense


def skeleton(directory: str | Path) -> torch.nn.Module:
    """The model of a directory's config.json on the meta device: names, shapes and ties, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        with torch.device("meta"):  # a thread's own: PyTorch's function modes are per thread
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # transformers raises many kinds for configs it cannot build
        raise ModelError(f"{directory}/config.json: cannot build the model ({' '.join(str(exc).split())[:300]})") from None


def materialize_buffers(model: torch.nn.Module) -> None:
    """Rebuild modules whose only unloaded state is computed at init (rotary tables)."""
    for name, module in list(model.named_modules()):
        own_meta = [b for b in module.buffers(recurse=False) if b.is_meta]
        own_params = list(module.parameters(recurse=False))
        if own_meta and not own_params:
            try:
                fresh = type(module)(config=model.config)
            except Exception:
                continue
            set_submodule(model, name, fresh)
