"""Exports of an nmq checkpoint for engines without N:M support.

``gguf`` (one ``.gguf`` file, what llama.cpp runs) is :mod:`nmq.models.export_gguf`.

``compressed-tensors`` (format ``pack-quantized``, what vLLM serves as
W4A16 and transformers loads with the ``compressed-tensors`` package): every
compressed layer exported dense, the dropped weights as the zero code, so
its sparsity is lost but not one value changes. The integer codes carry over
as they are: nmq's symmetric ``(c - 2**(b-1)) * scale`` is compressed-tensors'
``q * scale`` with ``q = c - 2**(b-1)``, and an asymmetric ``(c - z) *
scale`` is ``(q - zp) * scale`` with both shifted alike. Scales are written
in float32 (nmq's fp16 scales, exactly), so the peer's dequantization
reproduces nmq's weights bit for bit. compressed-tensors needs the group to
divide the layer's width; a layer whose width is not a multiple of nmq's
group takes the largest group that divides both (576 wide at group 128:
group 64, each scale written twice).

>>> import nmq, tempfile
>>> ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), tempfile.mkdtemp() + "/ck")
>>> r = export_checkpoint(ck, tempfile.mkdtemp() + "/ct", "compressed-tensors")
>>> r["layers"], r["format"], round(r["bits_per_weight"], 3)
(28, 'pack-quantized', 4.25)
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

from ..errors import FormatError, ModelError
from ..files import atomic_dir, check_new_output
from ..format import bitpack
from ..format.file import unshare_storage
from ..format.tensor import NMQTensor
from .checkpoint import RECORD_FILE, TOKENIZER_FILES, read_checkpoint
from .export_gguf import export_gguf

EXPORT_FORMATS = ("compressed-tensors", "gguf")


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, to: str, overwrite: bool = False) -> dict:
    """Write the nmq checkpoint ``ckpt`` as a ``to`` model directory (``gguf``: a file); returns what was
    written and its storage."""
    if to not in EXPORT_FORMATS:
        raise ModelError(f"export format {to!r} is unknown; accepted: {', '.join(EXPORT_FORMATS)}")
    if to == "gguf":
        return export_gguf(ckpt, out_dir, overwrite=overwrite)
    check_new_output(out_dir, overwrite)  # before any reading and packing
    ckpt = Path(ckpt)
    record, tensors, config = read_checkpoint(ckpt)
    state: dict[str, torch.Tensor] = {}
    groups: dict[tuple, list[str]] = {}  # one compressed-tensors scheme per (bits, symmetric, group)
    sparse_weights = 0
    for name, t in sorted(tensors.compressed.items()):
        if not 1 <= t.bits <= 8:
            raise ModelError(f"layer {name}: {t.bits}-bit codes; compressed-tensors packs 1 to 8 bits")
        fields, group = pack_quantized(t)
        state.update({f"{name}.{k}": v for k, v in fields.items()})
        groups.setdefault((t.bits, t.symmetric, group), []).append(name)
        sparse_weights += 0 if t.pattern.is_dense else t.out_features * t.in_features
    for name, value in tensors.dense.items():
        if name in record.get("buffers", []):
            continue  # non-persistent buffers (Gemma's embed_scale) are rebuilt by the model itself
        state[name] = value.contiguous()
    config["quantization_config"] = _quantization_config(groups)
    if "dtype" not in config and "torch_dtype" not in config:
        config["dtype"] = "float32"  # what the nmq checkpoint computes in (from_config's default); readers would guess
    _save(ckpt, out_dir, state, config, overwrite)
    weights = sum(math.prod(t.shape) for t in tensors.compressed.values())
    bits = sum(v.numel() * v.element_size() * 8 for k, v in state.items()
               if k.rpartition(".")[0] in tensors.compressed and not k.endswith(".weight_shape"))
    return {"format": "pack-quantized", "dir": str(out_dir), "layers": len(tensors.compressed),
            "bits_per_weight": bits / weights if weights else 0.0, "sparse_weights_densified": sparse_weights,
            "groups": {f"int{b}-{'sym' if s else 'asym'}-g{g}": len(n) for (b, s, g), n in groups.items()}}


def pack_quantized(t: NMQTensor) -> tuple[dict[str, torch.Tensor], int]:
    """compressed-tensors' ``weight_packed`` / ``weight_scale`` / ``weight_shape`` (/ ``weight_zero_point``) of
    ``t``, dense, and the group size they use (-1: one per row)."""
    out, k = t.out_features, t.in_features
    zero = t.zero_codes()  # [out, groups] int32
    dense = zero[:, torch.arange(t.padded_in) // t.group].to(torch.uint8)  # dropped weights: the zero code, i.e. 0
    dense.scatter_(1, t.positions(), t.codes().to(torch.uint8))
    group = -1 if t.group_size == -1 else math.gcd(t.group_size, k)

    def regrouped(x: torch.Tensor) -> torch.Tensor:  # per nmq group -> per exported group (each value repeated)
        return x if group == -1 else x.repeat_interleave(t.group_size // group, dim=1)[:, : k // group]

    fields = {"weight_packed": _pack_int32(dense[:, :k], t.bits), "weight_scale": regrouped(t.scales.float()).contiguous(),
              "weight_shape": torch.tensor([out, k], dtype=torch.int64)}
    if not t.symmetric:
        fields["weight_zero_point"] = _pack_int32(regrouped(zero).to(torch.uint8).T.contiguous(), t.bits).T.contiguous()
    return fields, group


def _pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit codes ``[rows, cols]`` as compressed-tensors packs them: a row's codes one bit
    stream, least significant bit first, read as little-endian int32 words (``ceil(cols * bits / 32)`` of them)."""
    rows, cols = codes.shape
    words = -(-cols * bits // 32)
    packed = bitpack.pack(codes, bits)
    padded = torch.zeros(rows, words * 4, dtype=torch.uint8)
    padded[:, : packed.shape[1]] = packed
    if sys.byteorder != "little":
        raise FormatError("compressed-tensors exports are written on little-endian machines only")
    return padded.view(torch.int32)


def _quantization_config(groups: dict[tuple, list[str]]) -> dict:
    config_groups = {}
    for i, ((bits, symmetric, group), names) in enumerate(sorted(groups.items())):
        config_groups[f"group_{i}"] = {
            "targets": [f"re:^{name.replace('.', '[.]')}$" for name in names],
            "weights": {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
                        "strategy": "channel" if group == -1 else "group", "group_size": None if group == -1 else group,
                        "observer": "minmax"},
            "input_activations": None, "output_activations": None, "format": "pack-quantized",
        }
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": [], "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {}}


def _save(ckpt: Path, out_dir: str | Path, state: dict[str, torch.Tensor], config: dict, overwrite: bool) -> None:
    from safetensors.torch import save_file

    unshare_storage(state)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for fname in TOKENIZER_FILES:
            if (ckpt / fname).is_file() and fname != RECORD_FILE:
                shutil.copy2(ckpt / fname, tmp / fname)
