"""Compression streamed from a model's files, for models larger than memory.

A Hugging Face directory of safetensors is never held whole: tensors are read
from the shards at the offsets their headers give (plain reads; no memory
map, whose touched pages would count as resident for the whole run),
compressed, written to the checkpoint's file as they come
(:class:`nmq.format.file.TensorFileWriter`), and forgotten; the model exists
as a skeleton on the meta device, for its layer names and tied weights.

* A data-free recipe (magnitude, rtn) goes one tensor at a time: peak memory
  is the largest tensor and its compression's temporaries.
* A calibrated one (wanda, sparsegpt, gptq) goes one decoder block at a time,
  as :mod:`nmq.calibration.run` runs it: the embeddings and the other tensors
  outside the blocks, one block, its activations for the calibration samples
  and one Hessian.

Either way the checkpoint holds what the in-memory path (``load_source`` +
``compress_model`` + ``save_checkpoint``) writes, and an interrupted run
resumes from its last finished tensor or block (``resume``).

>>> import nmq, tempfile
>>> src = tempfile.mkdtemp() + "/tiny"
>>> nmq.builtin_model().save_pretrained(src)
>>> ck = compress_streaming(src, tempfile.mkdtemp() + "/ck", nmq.Recipe(pattern="2:4"), progress=False)
>>> len(nmq.load_model(ck).nmq_recipe.to_dict()) > 0
True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..compress.recipe import Recipe
from ..compress.weight import compress_with
from ..errors import FormatError, ModelError, NMQError
from ..files import check_new_output
from ..format.file import TensorFileWriter, dtype_of, read_safetensors_header
from ..format.tensor import NMQTensor
from ..models.checkpoint import (
    TENSORS_FILE,
    finish_checkpoint,
    materialize_buffers,
    skeleton,
    stored_buffers,
)
from ..models.sources import check_shards
from ..progress import progress as progress_bar
from ..runtime.modules import target_layers
from .blocks import decoder_blocks, first_block_inputs
from .run import DEFAULT_BATCH, BlockBar, compress_block, compress_outside_blocks


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
    reason = _layout_blocker(Path(directory))
    return reason or _model_blocker(skeleton(directory), SafetensorsShards(directory), recipe)


def _layout_blocker(directory: Path) -> str | None:
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
                       progress: bool = True, resume: bool = False, calibration: torch.Tensor | None = None,
                       batch: int = DEFAULT_BATCH) -> Path:
    """Compress the Hugging Face directory ``src`` with ``recipe`` into the checkpoint ``out_dir`` without
    holding the model (module doc). ``dtype`` is the load dtype of ``nmq compress --dtype`` (auto: as stored,
    float16 as bfloat16, as the in-memory path loads it); ``dense_dtype`` that of the dense matrices. A
    calibrated recipe takes ``calibration`` token ids ``[samples, seq_len]``, ``batch`` samples at a time.

    The run works in ``OUT.partial`` (no ``nmq.json`` there, so nothing loads) and records after each tensor
    (each block, when calibrating) what it has written; ``resume`` continues an interrupted run from there,
    with the same settings, and the checkpoint is byte for byte the one an uninterrupted run writes.
    """
    out = Path(out_dir)
    check_new_output(out, overwrite)
    reason = _layout_blocker(Path(src))
    model, shards = (None, None) if reason else (skeleton(src), SafetensorsShards(src))
    reason = reason or _model_blocker(model, shards, recipe)
    if reason:
        raise ModelError(f"{src}: cannot be compressed streamed: {reason}")
    if recipe.needs_calibration and calibration is None:
        raise ModelError(f"method {recipe.method.name!r} needs calibration token ids [samples, seq_len]")
    targets = set(target_layers(model, recipe))
    if not targets:
        raise ModelError(f"no linear layer matches targets {recipe.targets!r} outside ignore {list(recipe.ignore)}")
    tied, missing = _ties(model, set(shards.entries))
    if missing:
        raise ModelError(f"{src}: the checkpoint lacks {missing[:3]}")
    settings = {"source": str(Path(src).resolve()), "recipe": recipe.to_dict(), "dtype": dtype,
                "dense_dtype": str(dense_dtype).removeprefix("torch.")}
    if recipe.needs_calibration:
        settings["calibration"] = _digest(calibration)
        settings["batch"] = batch
    run = _PartialRun(out, settings, resume, overwrite)
    try:
        if recipe.needs_calibration:
            _by_block(run, model, shards, recipe, targets, calibration, batch, dtype, dense_dtype, progress, src)
        else:
            _by_tensor(run, model, shards, recipe, targets, dtype, dense_dtype, progress, src)
        run.writer.close()
    except NMQError:  # bad input: a rerun would fail the same way, so nothing is kept to resume
        run.writer.abort()
        shutil.rmtree(run.dir, ignore_errors=True)
        raise
    except BaseException:  # interrupted, killed, out of disk: OUT.partial stays for --resume
        run.writer.abort()
        raise
    config = model.config
    floats = [e[1] for e in shards.entries.values() if e[1].is_floating_point]
    if floats:  # the dtype the in-memory path's model would compute in, as its config would say
        config.dtype = _as_loaded(torch.zeros(0, dtype=floats[0]), dtype).dtype
    config.to_json_file(str(run.dir / "config.json"))
    finish_checkpoint(run.dir, recipe, source or str(src), src, sorted(run.writer.desc["compressed"]), tied, [])
    return run.finish()


def _by_tensor(run: _PartialRun, model, shards: SafetensorsShards, recipe: Recipe, targets: set[str], dtype: str,
               dense_dtype, progress: bool, src) -> None:
    """A data-free recipe: every tensor of the shards in turn, compressed or copied, then forgotten."""
    wanted = model.state_dict()
    for name in progress_bar(shards.names(), total=len(shards.entries), desc="compress", enabled=progress):
        if name not in wanted or name in run.done:
            continue  # not in the model (rotary tables some checkpoints carry), or written before an interruption
        _add(run.writer, name, _as_loaded(shards.read(name), dtype), wanted, targets, recipe, dense_dtype, src)
        run.record(name)


def _by_block(run: _PartialRun, model, shards: SafetensorsShards, recipe: Recipe, targets: set[str],
              tokens: torch.Tensor, batch: int, dtype: str, dense_dtype, progress: bool, src) -> None:
    """A calibrated recipe, as :mod:`nmq.calibration.run` runs it, with one decoder block in memory at a time.

    The tensors outside the blocks (embeddings, final norm, lm_head) are loaded first and kept: the first
    block's inputs come from them, and they are written last. Each block is read, compressed on its inputs,
    written, and dropped; its outputs, the next block's inputs, are saved in the partial run with the journal,
    so that a resumed run starts from the block after the last finished one with the same activations.
    """
    wanted = model.state_dict()
    prefix, blocks = decoder_blocks(model)
    owner = {n: _block_of(n, prefix) for n in shards.names() if n in wanted}
    outer = {n: _as_loaded(shards.read(n), dtype) for n, b in owner.items() if b is None}
    _fill(model, {**outer, **{n: outer[s] for n, s in _ties(model, set(shards.entries))[0].items() if s in outer}})
    materialize_buffers(model)
    inputs, kwargs = first_block_inputs(model, blocks, tokens, batch)
    if run.state.get("blocks"):
        inputs = torch.load(run.dir / run.state["activations"], weights_only=True)
    bar = BlockBar(len(blocks), progress, done=run.state.get("blocks", 0))
    for bi in range(run.state.get("blocks", 0), len(blocks)):
        block = {n: _as_loaded(shards.read(n), dtype) for n, b in owner.items() if b == bi}
        _fill(blocks[bi], {n.removeprefix(f"{prefix}.{bi}."): t for n, t in block.items()})
        inputs = compress_block(blocks[bi], f"{prefix}.{bi}", inputs, kwargs, recipe, True, bar)
        _write(run.writer, model, block, targets, wanted, recipe, dense_dtype, src)
        blocks[bi] = torch.nn.Module()  # the compressed block is written; its memory goes
        run.record(*block, blocks=bi + 1, activations=inputs)
    bar.close()
    compress_outside_blocks(model, prefix, recipe, True)
    _write(run.writer, model, outer, targets, wanted, recipe, dense_dtype, src)


def _write(writer: TensorFileWriter, model, tensors: dict[str, torch.Tensor], targets: set[str], wanted: dict,
           recipe: Recipe, dense_dtype, src) -> None:
    """Tensors as read from the source, after their part of the model is compressed: a target's weight as its
    NMQLinear's compressed tensor, every other tensor (unchanged by compression) as it was read."""
    for n, t in tensors.items():
        layer = n.removesuffix(".weight")
        if layer in targets and n.endswith(".weight"):
            writer.add_compressed(layer, model.get_submodule(layer).nmq_weight)
        else:
            _add(writer, n, t, wanted, set(), recipe, dense_dtype, src)


def _block_of(name: str, prefix: str) -> int | None:
    """The decoder block a tensor belongs to (None: outside the blocks)."""
    head, _, rest = name.partition(prefix + ".")
    if head or not rest:
        return None
    index = rest.split(".")[0]
    return int(index) if index.isdigit() else None


def _fill(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put ``tensors`` (by state-dict name) into ``module``, a skeleton on the meta device."""
    module.load_state_dict(tensors, strict=False, assign=True)
    left = [n for n, t in module.state_dict().items() if n in tensors and t.is_meta]
    if left:
        raise ModelError(f"cannot load {left[:3]} into the model")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16] + f"-{list(t.shape)}"


class _PartialRun:
    """A run in ``OUT.partial`` and its journal: what is written, the writer's state, the saved activations.

    The journal is replaced atomically after every unit of work, so a kill at any point leaves the last
    finished unit's journal whole, and the writer's body file is cut back to it on resume.
    """

    def __init__(self, out: Path, settings: dict, resume: bool, overwrite: bool) -> None:
        self.out, self.settings = out, settings
        self.dir = out.with_name(out.name + ".partial")
        self.journal = self.dir / "journal.json"
        self.state = self._start(resume, overwrite)
        self.done: set[str] = set(self.state.get("done", []))
        self._done = list(self.state.get("done", []))
        self.writer = TensorFileWriter(self.dir / TENSORS_FILE, body=self.dir / "tensors.body",
                                       state=self.state.get("writer"))

    def record(self, *names: str, blocks: int | None = None, activations: list[torch.Tensor] | None = None) -> None:
        self._done.extend(names)
        self.done.update(names)
        record = {"settings": self.settings, "done": self._done, "writer": self.writer.state()}
        if blocks is not None:
            fname = f"activations-{blocks}.pt"
            torch.save(activations, self.dir / "activations.tmp")
            os.replace(self.dir / "activations.tmp", self.dir / fname)
            record.update(blocks=blocks, activations=fname)
        (self.dir / "journal.tmp").write_text(json.dumps(record))
        os.replace(self.dir / "journal.tmp", self.journal)  # a kill mid-write leaves the previous journal whole
        if blocks is not None and blocks > 1:
            (self.dir / f"activations-{blocks - 1}.pt").unlink(missing_ok=True)

    def finish(self) -> Path:
        self.journal.unlink()
        for p in self.dir.glob("activations-*.pt"):
            p.unlink()
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.dir, self.out)
        return self.out

    def _start(self, resume: bool, overwrite: bool) -> dict:
        """The journal's record on ``resume``; an empty one (and a fresh directory) for a new run."""
        if resume:
            if not self.journal.is_file():
                raise ModelError(f"--resume: {self.dir} holds no interrupted run to continue; run without --resume")
            record = json.loads(self.journal.read_text())
            for key in sorted(set(self.settings) | set(record["settings"])):
                value, was = self.settings.get(key), record["settings"].get(key)
                if was != value:
                    raise ModelError(f"--resume: the interrupted run has {key} {was!r}, this one {value!r}; "
                                     "accepted: the same settings, or a new run with --overwrite")
            return record
        if self.dir.exists():
            if not overwrite:
                raise ModelError(f"{self.dir} holds an interrupted run: pass --resume to continue it, or --overwrite "
                                 "to start over")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        return {}


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
                     torch.cat([q.scales for q in parts]), zeros, value_dtype=p.value_dtype)


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
