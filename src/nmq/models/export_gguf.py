"""GGUF export of an nmq checkpoint: one ``.gguf`` file that llama.cpp runs.

Architectures: LLaMA (and Mistral, which llama.cpp runs as LLaMA), Qwen2 and
Qwen3, with SiLU MLPs and plain RoPE. Every compressed layer is written dense
(llama.cpp has no N:M kernels: the dropped weights become zeros and are
computed), in the GGUF block type that holds nmq's values exactly:

* ``Q4_0`` (blocks of 32: an fp16 ``d`` and 4-bit ``q``, value ``(q - 8) * d``)
  whenever every code's offset ``c - zero`` lies in -8..7: symmetric 2, 3 and
  4 bits (``(c - 2**(b-1)) * scale``) and asymmetric 2 and 3 bits. Each block
  of 32 takes its group's fp16 scale as ``d``, so the value, computed as
  ``d * (q - 8)`` in fp32, is nmq's ``scale * (c - zero)`` bit for bit.
* ``Q8_0`` (an fp16 ``d`` and 8-bit ``q``, value ``q * d``) when the offsets
  need more: symmetric 8 bits and asymmetric 4 bits, equally exact.

Both need the layer's width to be a multiple of 32 and each block of 32 to
lie inside one quantization group (a group that is a multiple of 32, or one
group per row). A layer that misses that (a group of 16 or 48, asymmetric
8 bits) is requantized to Q8_0 by the ``gguf`` package's own quantizer and
reported as requantized: close, not exact. A layer whose width is not a
multiple of 32 has no block type at all and is written as exact F32 values;
a pruned-only layer (16-bit float values) as F16 or BF16, exactly.

Dense tensors keep their values: vectors (norms, biases) as F32, matrices
(embeddings, an uncompressed ``lm_head``) as F32, F16 or BF16 as the
checkpoint stores them. A tied ``lm_head`` is not written: llama.cpp uses
``token_embd`` when ``output.weight`` is absent.

llama.cpp's LLaMA graph applies RoPE to interleaved pairs of a head's
dimensions, where Hugging Face's rotates the two halves; the rows of q and k
(weights and biases) are permuted so that both compute the same attention,
as llama.cpp's own converter does. Qwen2 and Qwen3 use the halves layout in
llama.cpp too and are written unpermuted.

The tokenizer: a Hugging Face byte-level BPE (``tokenizer.json``) is written
as llama.cpp's ``gpt2`` model: tokens, token types, merges, special ids,
whether BOS/EOS are added, the chat template, and the pre-tokenizer's name
(``tokenizer.ggml.pre``): the source GGUF's own when the checkpoint was made
from one (SmolLM2's is ``smollm``: digits split one by one), else recognized
from ``tokenizer.json`` (GPT-2, Llama 3, Qwen2 and SmolLM splits), else
``default``. A byte-level model without tokenizer files (nmq's
``tiny-llama``, vocabulary 256) gets a vocabulary of the 256 byte tokens
(llama.cpp's ``llama`` model with byte fallback, the space byte being its
``▁``), so that llama.cpp's text in and out are the model's bytes (but for a
literal ``▁`` in the text, which reads as a space). Other tokenizers
(SentencePiece) are refused.

>>> import nmq, tempfile
>>> ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), tempfile.mkdtemp() + "/ck")
>>> r = export_gguf(ck, tempfile.mkdtemp() + "/tiny.gguf")
>>> r["layers"], r["types"], r["bits_per_weight"], r["requantized"]
(28, {'q4_0': 28}, 4.5, [])
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import FormatError, ModelError
from ..files import atomic_file, check_new_output
from ..format.tensor import NMQTensor
from .checkpoint import read_checkpoint
from .gguf import GGUF_BUILTINS, builtin_gguf_path, is_gguf

BLOCK = 32  # Q4_0 and Q8_0 block length
# model_type -> (GGUF architecture, whether q/k rows are permuted to llama.cpp's interleaved RoPE)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
                 "qwen3": ("qwen3", False)}
# Pre-tokenizer regexes (a tokenizer.json "Split" pattern) llama.cpp implements under these names.
SPLIT_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def export_gguf(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write the nmq checkpoint ``ckpt`` as the GGUF file ``out``; returns what was written and its storage."""
    import gguf

    out = Path(out)
    check_new_output(out, overwrite)  # before any reading and packing
    if out.is_dir():
        raise ModelError(f"output {out} is a directory; accepted: the path of the .gguf file to write")
    if sys.byteorder != "little":
        raise FormatError("GGUF exports are written on little-endian machines only")
    record, tensors, config = read_checkpoint(ckpt)
    ckpt = Path(ckpt)
    arch, permute = _architecture(ckpt, config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    writer = gguf.GGUFWriter(path=None, arch=arch)
    types: dict[str, int] = {}
    requantized: list[str] = []
    linear_bits = linear_weights = sparse_weights = 0
    for name, t in sorted(tensors.compressed.items()):
        qtype, data, exact = gguf_blocks(t)
        _add(writer, names, f"{name}.weight", _rows_for_rope(data, name, permute, heads, kv_heads), qtype)
        kind = qtype.name.lower()
        types[kind] = types.get(kind, 0) + 1
        if not exact:
            requantized.append(name)
        linear_bits += data.nbytes * 8
        linear_weights += t.out_features * t.in_features
        sparse_weights += 0 if t.pattern.is_dense else t.out_features * t.in_features
    dense = dict(tensors.dense)
    tie = config.get("tie_word_embeddings", True)  # transformers leaves it out of config.json only when True
    for alias, source in record["tied"].items():
        if not (tie and alias == "lm_head.weight") and source in dense:
            dense[alias] = dense[source]  # a tie the config does not declare: llama.cpp needs the tensor itself
    buffers = set(record.get("buffers", []))
    for name, value in sorted(dense.items()):
        if name in buffers:
            continue
        qtype, data = _dense(value)
        _add(writer, names, name, _rows_for_rope(data, name.rpartition(".")[0], permute, heads, kv_heads), qtype)
    pre = _add_metadata(writer, gguf, ckpt, record, config, arch, types)
    with atomic_file(out) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
    return {"format": "gguf", "file": str(out), "architecture": arch, "layers": len(tensors.compressed),
            "bits_per_weight": linear_bits / linear_weights if linear_weights else 0.0, "types": types,
            "requantized": requantized, "sparse_weights_densified": sparse_weights, "pre_tokenizer": pre,
            "bytes": out.stat().st_size}


def gguf_blocks(t: NMQTensor):
    """``t`` as GGUF tensor data: the type, its bytes ``[out, row bytes]`` (uint8) and whether they hold ``t``'s
    values exactly (module docstring: which type when)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    out, k = t.out_features, t.in_features
    value_dtype = getattr(t, "value_dtype", None)
    if value_dtype is not None:  # pruned only: the kept 16-bit floats, and zeros
        dense = t.to_dense(value_dtype)
        return (Q.BF16 if value_dtype == torch.bfloat16 else Q.F16), _bytes(dense), True
    if k % BLOCK:
        return Q.F32, _bytes(t.to_dense()), True
    if not (t.group % BLOCK == 0 or t.group >= k) or _offset_range(t)[1] > 127:
        return Q.Q8_0, quantize(t.to_dense().numpy(), Q.Q8_0).reshape(out, -1), False
    lo, hi = _offset_range(t)
    kept_per_group = t.group // t.pattern.m * t.pattern.n
    offsets = t.codes() - t.zero_codes().repeat_interleave(kept_per_group, dim=1)  # c - zero of each kept weight
    q = torch.zeros(out, t.padded_in, dtype=torch.int8)  # dropped weights: offset 0, the value 0
    q.scatter_(1, t.positions(), offsets.to(torch.int8))
    q = q[:, :k].reshape(out, k // BLOCK, BLOCK)
    d = t.scales[:, torch.arange(0, k, BLOCK) // t.group].contiguous()  # each block's group scale, fp16
    d_bytes = d.view(torch.uint8).reshape(out, k // BLOCK, 2)
    if lo >= -8 and hi <= 7:
        u = (q + 8).view(torch.uint8)
        qs = u[..., : BLOCK // 2] | (u[..., BLOCK // 2:] << 4)  # element j in the low nibble of byte j, j+16 high
        return Q.Q4_0, torch.cat([d_bytes, qs], dim=-1).reshape(out, -1).numpy(), True
    return Q.Q8_0, torch.cat([d_bytes, q.view(torch.uint8)], dim=-1).reshape(out, -1).numpy(), True


def _offset_range(t: NMQTensor) -> tuple[int, int]:
    """The range of ``c - zero`` that ``t``'s header allows."""
    if t.symmetric:
        return -(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1
    return -((1 << t.bits) - 1), (1 << t.bits) - 1


def _dense(value: torch.Tensor):
    from gguf import GGMLQuantizationType as Q

    if not value.is_floating_point():
        raise ModelError(f"a dense {value.dtype} tensor; accepted: floating-point tensors")
    if value.dim() < 2 or value.dtype not in (torch.float16, torch.bfloat16):
        return Q.F32, _bytes(value.float())  # llama.cpp wants norms in F32; wider is exact
    return (Q.BF16 if value.dtype == torch.bfloat16 else Q.F16), _bytes(value)


def _bytes(value: torch.Tensor) -> np.ndarray:
    """The little-endian bytes of ``value``, one row per output row (vectors: one row)."""
    value = value.contiguous()
    if value.dtype == torch.bfloat16:  # NumPy has no bfloat16
        value = value.view(torch.int16)
    array = value.numpy()
    return array.view(np.uint8).reshape(array.shape[0] if array.ndim > 1 else 1, -1)


def _rows_for_rope(data: np.ndarray, module: str, permute: bool, heads: int, kv_heads: int) -> np.ndarray:
    """The rows of a q or k projection (weight or bias) in llama.cpp's interleaved RoPE order; others as given.

    Hugging Face rotates dimension ``i`` of a head with ``i + d/2``; llama.cpp's LLaMA graph rotates ``2i`` with
    ``2i + 1``, so row ``2i`` must hold HF's ``i`` and row ``2i + 1`` HF's ``i + d/2``.
    """
    leaf = module.rpartition(".")[2]
    if not permute or leaf not in ("q_proj", "k_proj"):
        return data
    n = heads if leaf == "q_proj" else kv_heads

    def order(rows: int) -> np.ndarray:
        return np.arange(rows).reshape(n, 2, rows // n // 2).swapaxes(1, 2).reshape(-1)

    if data.shape[0] == 1:  # a bias (F32 bytes): its elements are the rows
        values = data.view(np.float32).reshape(-1)
        return values[order(values.size)].view(np.uint8).reshape(1, -1)
    return data[order(data.shape[0])]


def _add(writer, names, name: str, data: np.ndarray, qtype) -> None:
    gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if gguf_name is None:
        raise ModelError(f"tensor {name} has no GGUF name in architecture {writer.arch!r}; accepted: the tensors "
                         "of a plain LLaMA, Mistral, Qwen2 or Qwen3 model")
    if data.shape[0] == 1:
        data = data.reshape(-1)  # vectors are 1-D in GGUF
    writer.add_tensor(gguf_name, data, raw_dtype=qtype)


def _architecture(ckpt: Path, config: dict) -> tuple[str, bool]:
    where = f"{ckpt}/config.json"
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ModelError(f"{where}: model_type {model_type!r} cannot be exported to GGUF; accepted: "
                         f"{', '.join(ARCHITECTURES)}")
    if config.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{where}: hidden_act {config['hidden_act']!r}; llama.cpp's {model_type} runs silu only")
    rope_type = _rope(config).get("rope_type") or _rope(config).get("type") or "default"  # "type": transformers 4
    if rope_type != "default":
        raise ModelError(f"{where}: RoPE scaling {rope_type!r} cannot be exported to GGUF; accepted: plain RoPE "
                         "(rope_type 'default')")
    window = config.get("sliding_window") if config.get("use_sliding_window", model_type == "mistral") else None
    if window is not None and window < config.get("max_position_embeddings", math.inf):
        raise ModelError(f"{where}: a sliding window of {window} tokens; llama.cpp's {ARCHITECTURES[model_type][0]} "
                         "attends to the whole context (accepted: no sliding window)")
    return ARCHITECTURES[model_type]


def _rope(config: dict) -> dict:
    """RoPE settings (transformers 5: ``rope_parameters``; 4: ``rope_theta`` and ``rope_scaling``)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return rope


def _add_metadata(writer, gguf, ckpt: Path, record: dict, config: dict, arch: str, types: dict[str, int]) -> str:
    """Hyperparameters, file type and tokenizer; returns the pre-tokenizer name written."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(Path(str(record.get("source") or ckpt)).name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    # the type of most of the layers' tensors names the file, as llama.cpp's quantizer names its outputs
    file_types = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    main = max(types, key=types.get) if types else "f32"
    writer.add_file_type(file_types.get(main, gguf.LlamaFileType.ALL_F32))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return _add_tokenizer(writer, gguf, ckpt, record, config)


def _add_tokenizer(writer, gguf, ckpt: Path, record: dict, config: dict) -> str:
    vocab_size = config["vocab_size"]
    if not (ckpt / "tokenizer.json").is_file():
        if vocab_size == 256 and not (ckpt / "tokenizer.model").is_file():
            return _add_byte_vocab(writer, gguf)
        raise ModelError(f"{ckpt}: no tokenizer.json; accepted: a byte-level BPE tokenizer (tokenizer.json), or "
                         "none for a byte-level model of vocabulary 256")
    from tokenizers import Tokenizer

    try:
        spec = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
        tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    except Exception as exc:  # tokenizers' own errors are about the JSON's insides
        raise FormatError(f"{ckpt}/tokenizer.json: not a readable tokenizer ({' '.join(str(exc).split())[:200]})"
                          ) from None
    if (spec.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise ModelError(f"{ckpt}/tokenizer.json: a {(spec.get('model') or {}).get('type')} tokenizer without a "
                         "byte-level decoder; accepted: byte-level BPE (GPT-2 style, as SmolLM, Llama 3 and Qwen use)")
    vocab = tok.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise ModelError(f"{ckpt}/tokenizer.json: token id {max(vocab.values())} is outside the model's "
                         f"vocabulary of {vocab_size} (config.json vocab_size)")
    added = tok.get_added_tokens_decoder()
    by_id = {i: t for t, i in vocab.items()}
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer's vocabulary
            tokens.append(f"[PAD{i}]")
            kinds.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            kinds.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.NORMAL)
    pre = pre_tokenizer_name(spec, record, tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    special = gguf.SpecialVocab(ckpt, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ModelError(f"{ckpt}/tokenizer.json: no BPE merges; llama.cpp's gpt2 tokenizer needs them")
    # Whether the tokenizer adds BOS/EOS is what its post-processor does, which the config files may not say.
    ids = tok.encode("a").ids
    for kind in ("bos", "eos"):
        if kind not in special.add_special_token and kind in special.special_token_ids:
            end = ids[0] if kind == "bos" else ids[-1]
            special.add_special_token[kind] = end == special.special_token_ids[kind]
    special.add_to_gguf(writer, quiet=True)
    return pre


def pre_tokenizer_name(spec: dict, record: dict, tokens: list[str]) -> str:
    """llama.cpp's name for the pre-tokenizer: the source GGUF's own (same tokens), else recognized from
    ``tokenizer.json``, else ``default``."""
    source = record.get("source")
    path = None
    try:
        if source in GGUF_BUILTINS:
            path = builtin_gguf_path(source)
        elif source and is_gguf(source) and Path(source).is_file():
            path = Path(source)
    except ModelError:
        path = None  # the source's package is gone: recognize the tokenizer instead
    if path is not None:
        fields = _gguf_fields(path, ("tokenizer.ggml.pre", "tokenizer.ggml.tokens"))
        if isinstance(fields.get("tokenizer.ggml.pre"), str) and fields.get("tokenizer.ggml.tokens") == tokens:
            return fields["tokenizer.ggml.pre"]
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return SPLIT_PRE_TOKENIZERS.get((steps[0].get("pattern") or {}).get("Regex"), "default")
    return "default"


def _gguf_fields(path: Path, keys: tuple[str, ...]) -> dict:
    """The string and string-array metadata ``keys`` of the GGUF file ``path`` (those it has).

    Read directly: ``gguf.GGUFReader`` builds every field's parts, 10 s for a 49k-token vocabulary.
    """
    import mmap
    import struct

    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
    found: dict = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 8  # magic, version

        def take(fmt: str):
            nonlocal pos
            value = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize("<" + fmt)
            return value[0]

        def string() -> str:
            nonlocal pos
            n = take("Q")
            pos += n
            return buf[pos - n: pos].decode("utf-8", "replace")

        def value(kind: int, keep: bool):
            nonlocal pos
            if kind == 8:
                return string()
            if kind == 9:
                item, n = take("I"), take("Q")
                if item == 8 or item == 9:
                    items = [value(item, keep) for _ in range(n)]
                    return items if keep else None
                pos += scalar[item] * n
                return None
            pos += scalar[kind]
            return None

        try:
            _, kvs = take("Q"), take("Q")
            for _ in range(kvs):
                key = string()
                got = value(take("I"), key in keys)
                if key in keys:
                    found[key] = got
        except (struct.error, KeyError, ValueError):
            return {}  # a damaged source: recognized from tokenizer.json instead
    return found


def _add_byte_vocab(writer, gguf) -> str:
    """The 256 byte tokens of a byte-level model (token = byte) as llama.cpp's ``llama`` (SentencePiece) vocabulary.

    Every token but the space is ``<0xXX>``, a byte-fallback token: text llama.cpp has no token for is split
    into those, so every byte maps to its own id. The space is ``▁``, because llama.cpp writes spaces as ``▁``
    before tokenizing (and back after). No BOS is added and no token is special.
    """
    tokens = ["▁" if b == 0x20 else f"<0x{b:02X}>" for b in range(256)]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 256)
    writer.add_token_types([gguf.TokenType.NORMAL if b == 0x20 else gguf.TokenType.BYTE for b in range(256)])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    return "default"
