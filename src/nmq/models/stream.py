"""Compression streamed from a model's files, for models larger than memory.

A data-free recipe (magnitude, rtn) on a Hugging Face directory of
safetensors never holds the model: its tensors are read one at a time from
the shards (plain reads at the offsets their headers give; no memory map,
whose touched pages would count as resident for the whole run), each target
layer's weight is compressed and written to the checkpoint's file as it
comes (:class:`nmq.format.file.TensorFileWriter`), and the model exists only
as a skeleton on the meta device, for its layer names and tied weights. Peak
memory is the largest tensor and its compression's temporaries, whatever the
model's size. The checkpoint holds what the in-memory path
(``load_source`` + ``compress_model`` + ``save_checkpoint``) writes.

>>> import nmq, tempfile
>>> src = tempfile.mkdtemp() + "/tiny"
>>> nmq.builtin_model().save_pretrained(src)
>>> ck = compress_streaming(src, tempfile.mkdtemp() + "/ck", nmq.Recipe(pattern="2:4"), progress=False)
>>> len(nmq.load_model(ck).nmq_recipe.to_dict()) > 0
True
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..atomic import check_new_output
from ..compress.recipe import Recipe
from ..compress.weight import compress_with
from ..errors import FormatError, ModelError, NMQError
from ..format.file import TensorFileWriter, dtype_of, read_safetensors_header
from ..format.tensor import NMQTensor
from ..progress import progress as progress_bar
from ..runtime.modules import target_layers
from .checkpoint import TENSORS_FILE, finish_checkpoint, skeleton, stored_buffers
from .sources import check_shards


class SafetensorsShards:
    """The tensors of a directory's safetensors files (one, or the shards its index names), read one at a time."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        check_shards(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
        elif (directory / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise ModelError(f"{directory}: no model.safetensors or model.safetensors.index.json")
        self.entries: dict[str, tuple[Path, torch.dtype, list[int], int, int]] = {}
        for fname in files:
            path = directory / fname
            try:
                base, header = read_safetensors_header(path)
            except FormatError as exc:
                raise ModelError(str(exc)) from None
            for name, e in header.items():
                if name != "__metadata__":
                    start, end = e["data_offsets"]
                    self.entries[name] = (path, dtype_of(e["dtype"]), e["shape"], base + start, end - start)

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> torch.Tensor:
        path, dtype, shape, offset, nbytes = self.entries[name]
        buf = bytearray(nbytes)
        with open(path, "rb") as fh:
            fh.seek(offset)
            fh.readinto(buf)
        if not nbytes:
            return torch.zeros(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def stream_blocker(directory: str | Path, recipe: Recipe) -> str | None:
    """Why ``directory`` cannot be compressed streamed with ``recipe`` (None: it can)."""
    reason = _layout_blocker(Path(directory), recipe)
    return reason or _model_blocker(skeleton(directory), SafetensorsShards(directory), recipe)


def _layout_blocker(directory: Path, recipe: Recipe) -> str | None:
    if recipe.needs_calibration:
        return f"method {recipe.method.name!r} calibrates on the whole model"
    if not directory.is_dir() or (directory / "nmq.json").exists() or not (directory / "config.json").is_file():
        return "the source is not a Hugging Face model directory"
    if not ((directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()):
        return "its weights are not in safetensors files"
    return None


def _model_blocker(model: torch.nn.Module, shards: SafetensorsShards, recipe: Recipe) -> str | None:
    extra = stored_buffers(model)
    if extra:
        return f"its buffer {extra[0]} is computed by the model at init (the in-memory path stores it)"
    tied, _ = _ties(model, set(shards.entries))
    shared = [n for n in target_layers(model, recipe) if f"{n}.weight" in tied]
    if shared:
        return f"layer {shared[0]} shares its weight with {tied[shared[0] + '.weight']} (compressed in memory)"
    return None


def compress_streaming(src: str | Path, out_dir: str | Path, recipe: Recipe, *, dtype: str = "auto",
                       dense_dtype: torch.dtype | None = None, source: str | None = None, overwrite: bool = False,
                       progress: bool = True, resume: bool = False) -> Path:
    """Compress the Hugging Face directory ``src`` with the data-free ``recipe`` into the checkpoint ``out_dir``,
    one tensor in memory at a time (module doc). ``dtype`` is the load dtype of ``nmq compress --dtype`` (auto:
    as stored, float16 as bfloat16, as the in-memory path loads it); ``dense_dtype`` that of the dense matrices.

    The run works in ``OUT.partial`` (no ``nmq.json`` there, so nothing loads) and records after each tensor
    what it has written; ``resume`` continues an interrupted run from its last finished tensor, with the same
    settings, and the checkpoint is byte for byte the one an uninterrupted run writes.
    """
    out = Path(out_dir)
    check_new_output(out, overwrite)
    reason = _layout_blocker(Path(src), recipe)
    model, shards = (None, None) if reason else (skeleton(src), SafetensorsShards(src))
    reason = reason or _model_blocker(model, shards, recipe)
    if reason:
        raise ModelError(f"{src}: cannot be compressed streamed: {reason}")
    targets = set(target_layers(model, recipe))
    if not targets:
        raise ModelError(f"no linear layer matches targets {recipe.targets!r} outside ignore {list(recipe.ignore)}")
    wanted = model.state_dict()
    tied, missing = _ties(model, set(shards.entries))
    if missing:
        raise ModelError(f"{src}: the checkpoint lacks {missing[:3]}")
    settings = {"source": str(Path(src).resolve()), "recipe": recipe.to_dict(), "dtype": dtype,
                "dense_dtype": str(dense_dtype).removeprefix("torch.")}
    partial = out.with_name(out.name + ".partial")
    journal = partial / "journal.json"
    done, state = _start(partial, journal, settings, resume, overwrite)
    writer = TensorFileWriter(partial / TENSORS_FILE, body=partial / "tensors.body", state=state)
    try:
        for name in progress_bar(shards.names(), total=len(shards.entries), desc="compress", enabled=progress):
            if name not in wanted or name in done:
                continue  # not in the model (rotary tables some checkpoints carry), or written before an interruption
            _add(writer, name, _as_loaded(shards.read(name), dtype), wanted, targets, recipe, dense_dtype, src)
            done.append(name)
            record = json.dumps({"settings": settings, "done": done, "writer": writer.state()})
            (partial / "journal.tmp").write_text(record)
            os.replace(partial / "journal.tmp", journal)  # a kill mid-write leaves the previous journal whole
        writer.close()
    except NMQError:  # bad input: a rerun would fail the same way, so nothing is kept to resume
        writer.abort()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except BaseException:  # interrupted, killed, out of disk: OUT.partial stays for --resume
        writer.abort()
        raise
    config = model.config
    floats = [e[1] for e in shards.entries.values() if e[1].is_floating_point]
    if floats:  # the dtype the in-memory path's model would compute in, as its config would say
        config.dtype = _as_loaded(torch.zeros(0, dtype=floats[0]), dtype).dtype
    config.to_json_file(str(partial / "config.json"))
    finish_checkpoint(partial, recipe, source or str(src), src, sorted(writer.desc["compressed"]), tied, [])
    journal.unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


def _start(partial: Path, journal: Path, settings: dict, resume: bool, overwrite: bool) -> tuple[list[str], dict | None]:
    """The tensors already written and the writer's state: none for a new run, the journal's on ``resume``."""
    if resume:
        if not journal.is_file():
            raise ModelError(f"--resume: {partial} holds no interrupted run to continue; run without --resume")
        record = json.loads(journal.read_text())
        for key, value in settings.items():
            if record["settings"].get(key) != value:
                raise ModelError(f"--resume: the interrupted run has {key} {record['settings'].get(key)!r}, this one "
                                 f"{value!r}; accepted: the same settings, or a new run with --overwrite")
        return record["done"], record["writer"]
    if partial.exists():
        if not overwrite:
            raise ModelError(f"{partial} holds an interrupted run: pass --resume to continue it, or --overwrite to "
                             "start over")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return [], None


def _add(writer: TensorFileWriter, name: str, t: torch.Tensor, wanted: dict, targets: set[str], recipe: Recipe,
         dense_dtype: torch.dtype | None, src) -> None:
    """One tensor of the source into the checkpoint: compressed if it is a target's weight, else dense."""
    if tuple(t.shape) != tuple(wanted[name].shape):
        raise ModelError(f"{src}: tensor {name!r} is {list(t.shape)}; the config makes it {list(wanted[name].shape)}")
    layer = name.removesuffix(".weight")
    if name.endswith(".weight") and layer in targets:
        try:
            writer.add_compressed(layer, compress_rows(t, recipe))
        except NMQError as exc:
            raise type(exc)(f"layer {layer}: {exc}") from None
        return
    if dense_dtype is not None and t.dim() >= 2 and t.is_floating_point():
        t = t.to(dense_dtype)
    writer.add_dense(name, t)


# Rows compressed at a time: a data-free recipe treats rows independently, and a whole 11008 x 4096 layer's
# temporaries are 1.7 GB (38 bytes a weight), 1024 rows' 160 MB.
ROWS_PER_CHUNK = 1024


def compress_rows(w: torch.Tensor, recipe: Recipe) -> NMQTensor:
    """``compress_with(w, recipe)`` for a data-free recipe, ``ROWS_PER_CHUNK`` rows at a time: the same tensor."""
    if w.shape[0] <= ROWS_PER_CHUNK:
        return compress_with(w, recipe)
    parts = [compress_with(w[r : r + ROWS_PER_CHUNK], recipe) for r in range(0, w.shape[0], ROWS_PER_CHUNK)]
    p = parts[0]
    zeros = None if p.zeros is None else torch.cat([q.zeros for q in parts])
    return NMQTensor((w.shape[0], w.shape[1]), p.pattern, p.bits, p.group_size, p.symmetric, p.metadata,
                     torch.cat([q.values for q in parts]), torch.cat([q.meta for q in parts]),
                     torch.cat([q.scales for q in parts]), zeros)


def _as_loaded(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """``t`` in the dtype the in-memory path would load it in."""
    if not t.is_floating_point():
        return t
    if dtype != "auto":
        return t.to(getattr(torch, dtype))
    return t.to(torch.bfloat16) if t.dtype == torch.float16 else t


def _ties(model: torch.nn.Module, stored: set[str]) -> tuple[dict[str, str], list[str]]:
    """Tied names -> the stored name they share (as ``save_checkpoint`` records them), and the state-dict
    entries the files lack."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    tied = {}
    for names in groups.values():
        have = [n for n in names if n in stored]
        for n in names:
            if have and n not in stored:
                tied[n] = have[0]
    missing = [n for n in model.state_dict() if n not in stored and n not in tied]
    return tied, missing
