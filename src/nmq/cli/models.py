"""``nmq compress | inspect | eval | generate``: models in and out of nmq's form."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import NMQError
from ..progress import say
from .common import chatty, command

EXAMPLES = {
    "compress": """
        examples:
          nmq compress tiny-llama -o ckpt/tiny-2of4
          nmq compress smollm2-135m -o ckpt/smol-2of4
          nmq compress path/to/hf-llama -o ckpt/llama-4of8 --pattern 4:8 --group-size 64 --asymmetric
          nmq compress weight.npy -o weight.nmq.safetensors --metadata index
    """,
    "inspect": """
        examples:
          nmq inspect ckpt/tiny-2of4
          nmq inspect weight.safetensors --json
    """,
    "eval": """
        examples:
          nmq eval ckpt/tiny-2of4 --perplexity
          nmq eval ckpt/tiny-2of4 --perplexity notes.txt --window 1024 --stride 512 --json
          nmq eval smollm2-135m --perplexity --max-tokens 40000
    """,
    "export": """
        examples:
          nmq export ckpt/tiny-2of4 -o export/tiny-ct --to compressed-tensors
          nmq export ckpt/smollm2-2of4 -o export/smollm2-ct --to compressed-tensors --json
          nmq export ckpt/smollm2-2of4 -o export/smollm2.gguf --to gguf
    """,
    "generate": """
        examples:
          nmq generate tiny-llama --prompt "import os"
          nmq generate smollm2-135m --prompt "The capital of France is"
          nmq generate ckpt/tiny-2of4 --prompt "def main():" --max-new-tokens 64 --backend reference --json
    """,
}


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = command(sub, common, "compress", "Prune and quantize the linear layers of a model and write a checkpoint directory.",
                EXAMPLES["compress"])
    p.add_argument("source", metavar="SRC", help="a Hugging Face model directory, a .gguf file, a built-in model (tiny-llama, smollm2-135m), "
                   "or a bare weight file (.npy, .safetensors, .pt) of 2-D weights")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="checkpoint directory to write (a .safetensors file for a bare weight file)")
    p.add_argument("--pattern", default="2:4", help="N:M sparsity along K, 1 <= N <= M <= 16; N == M is dense (default 2:4)")
    p.add_argument("--bits", type=int, default=4, help="weight code width: 2, 3, 4 or 8 (default 4); 16: prune only, "
                   "kept values stored as 16-bit floats (bfloat16 for a bfloat16 model, else float16; with magnitude, "
                   "wanda or sparsegpt; no group size)")
    p.add_argument("--group-size", type=int, default=128, help="quantization group along K, a multiple of M, or -1 per row (default 128)")
    p.add_argument("--asymmetric", action="store_true", help="per-group zero points (default symmetric)")
    p.add_argument("--metadata", default="rank", choices=["rank", "index"], help="N:M metadata encoding (default rank, the compact one)")
    p.add_argument("--method", default="magnitude",
                   help="magnitude, rtn, wanda, sparsegpt (joint with quantization), gptq, wanda+gptq (default magnitude)")
    p.add_argument("--calibration", metavar="TEXT", help="calibration text file or directory, for wanda/sparsegpt/gptq "
                   "(default: the standard library's source, training split)")
    p.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype to load and calibrate the model in, and to store its dense matrices (embeddings, "
                        "lm_head) in (default auto: loaded as stored, float16 as bfloat16 since float16 matmuls are "
                        "slow on CPU; dense matrices stored as bfloat16 when the source is float32)")
    p.add_argument("--damp", type=float, default=0.01, help="Hessian damping, fraction of its mean diagonal (default 0.01)")
    p.add_argument("--act-order", action="store_true", help="GPTQ: process columns by decreasing activation energy")
    p.add_argument("--recover", type=int, default=0, metavar="PASSES",
                   help="after each block is compressed, tune its kept values and scales (masks fixed) for PASSES "
                        "passes over the calibration samples so that its output matches the dense block's "
                        "(calibrated methods; default 0: none)")
    p.add_argument("--targets", default=".*", metavar="REGEX", help="compress linear layers whose name matches (default all)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="leave matching layers dense (repeatable; lm_head always, unless --compress-lm-head)")
    p.add_argument("--compress-lm-head", action="store_true", help="compress lm_head too")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--in-memory", action="store_true", help="load the whole model even where it could stream (by "
                   "default a directory of safetensors is read and compressed one tensor at a time, or one decoder "
                   "block at a time for calibrated methods)")
    p.add_argument("--resume", action="store_true", help="continue a streamed compression that was interrupted "
                   "(its OUT.partial) from its last finished tensor or block, with the same settings: the same "
                   "checkpoint, byte for byte, as an uninterrupted run")
    p.add_argument("--json", action="store_true", help="print the storage summary as JSON")
    p.set_defaults(func=cmd_compress)

    p = command(sub, common, "inspect", "Show what a checkpoint or tensor file holds and the storage of every part, bit by bit.",
                EXAMPLES["inspect"])
    p.add_argument("path", metavar="DIR_OR_FILE", help="an nmq checkpoint directory or .safetensors file")
    p.add_argument("--json", action="store_true", help='print {"tensors": [...], "compressed": {...}, "checkpoint": {...}}')
    p.set_defaults(func=cmd_inspect)

    p = command(sub, common, "eval", "Measure a model's perplexity on a text (the held-out reference text by default).",
                EXAMPLES["eval"])
    p.add_argument("model", metavar="DIR", help="an nmq checkpoint, a Hugging Face model directory, a .gguf file, "
                   "or a built-in model (tiny-llama, smollm2-135m)")
    p.add_argument("--perplexity", nargs="?", const="", metavar="FILE", required=True,
                   help="text file to evaluate on (default: the built-in held-out text)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, default=256, help="tokens between window starts (default 256)")
    p.add_argument("--max-bytes", type=int, default=0, help="evaluate only the first N bytes of the text (default all)")
    p.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens of the text (default all)")
    p.add_argument("--backend", default="auto", help="backend for compressed layers (default auto)")
    p.add_argument("--json", action="store_true", help='print {"perplexity", "bits_per_token", "tokens", ...}')
    p.set_defaults(func=cmd_eval)

    p = command(sub, common, "export", "Write an nmq checkpoint for an engine without N:M support (compressed-tensors: "
                "what vLLM serves as W4A16; gguf: what llama.cpp runs); sparse layers are written dense, every value "
                "kept.", EXAMPLES["export"])
    p.add_argument("checkpoint", metavar="CKPT", help="an nmq checkpoint directory (made by 'nmq compress')")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the model directory to write (gguf: the .gguf file)")
    p.add_argument("--to", default="compressed-tensors", choices=["compressed-tensors", "gguf"],
                   help="format (default compressed-tensors: pack-quantized safetensors and its quantization_config; "
                   "gguf: one file, layers as exact Q4_0/Q8_0 blocks, LLaMA, Mistral, Qwen2 and Qwen3 models)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help='print {"format", "layers", "bits_per_weight", ...}')
    p.set_defaults(func=cmd_export)

    p = command(sub, common, "generate", "Generate text with a model's KV cache; print prefill time, decode latency and tokens/s.",
                EXAMPLES["generate"])
    p.add_argument("model", metavar="DIR", help="an nmq checkpoint, a Hugging Face model directory, a .gguf file, "
                   "or a built-in model (tiny-llama, smollm2-135m)")
    p.add_argument("--prompt", default="def ", help="text to continue (default 'def ')")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--backend", default="auto", help="backend of compressed layers: auto, reference, cpu, triton, cusparselt")
    p.add_argument("--path", default="w4a16", choices=["w4a16", "w4a8"], help="numeric path of compressed layers")
    p.add_argument("--temperature", type=float, default=0.0, help="sample with this temperature (default 0: greedy)")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user's message through the tokenizer's "
                   "chat template and print the reply, up to its end (an Instruct model's)")
    p.add_argument("--json", action="store_true", help="print the result and timings as JSON instead of streaming")
    p.set_defaults(func=cmd_generate)



def cmd_compress(args: argparse.Namespace) -> int:
    from ..calibration.run import compress_model
    from ..calibration.stream import compress_streaming, stream_blocker
    from ..compress.recipe import DEFAULT_IGNORE, Recipe
    from ..files import check_new_output
    from ..models.checkpoint import save_checkpoint
    from ..models.sources import load_source
    from ..models.summary import format_table, summarize
    from ..models.weight_file import compress_weight_file, is_weight_file

    ignore = tuple(args.ignore) + (() if args.compress_lm_head else DEFAULT_IGNORE)
    recipe = Recipe(
        pattern=args.pattern, bits=args.bits, group_size=args.group_size, symmetric=not args.asymmetric,
        metadata=args.metadata, method=args.method, targets=args.targets, ignore=ignore,
        damp=args.damp, act_order=args.act_order, recover=args.recover,
    )
    check_new_output(args.output, args.overwrite)
    if is_weight_file(args.source):
        if recipe.needs_calibration:
            raise NMQError(f"method {recipe.method.name!r} needs a model to calibrate; a bare weight file takes magnitude or rtn "
                           "(or call nmq.compress_weight(w, method=..., inputs=X) from Python)")
        compress_weight_file(args.source, args.output, recipe, overwrite=args.overwrite)
    elif args.resume or (not args.in_memory and stream_blocker(args.source, recipe) is None):
        dense_dtype = dense_storage_dtype(args.dtype, chatty(args))
        unit = "block" if recipe.needs_calibration else "tensor"
        say(f"compressing {args.source} streamed, one {unit} in memory at a time", chatty(args))
        tokens = _calibration(args, args.source) if recipe.needs_calibration else None
        compress_streaming(args.source, args.output, recipe, dtype=args.dtype, dense_dtype=dense_dtype,
                           source=args.source, overwrite=args.overwrite, progress=not args.quiet, resume=args.resume,
                           calibration=tokens)
    else:
        say(f"loading {args.source}", chatty(args))
        model, source_dir = load_source(args.source, progress=not args.quiet, dtype=args.dtype)
        tokens = _calibration(args, source_dir, model.config.vocab_size) if recipe.needs_calibration else None
        compress_model(model, recipe, tokens, progress=not args.quiet)
        dense_dtype = dense_storage_dtype(args.dtype, chatty(args))
        save_checkpoint(model, args.output, source_dir=source_dir, source=args.source, overwrite=args.overwrite,
                        dense_dtype=dense_dtype)
    summary = summarize(args.output, validate=False)  # just written: its header is all the table needs
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        print(f"wrote {args.output}")
    return 0


def _calibration(args: argparse.Namespace, source_dir, vocab_size: int | None = None):
    """The calibration token ids ``[samples, seq_len]`` of ``--calibration``/``--samples``/``--seq-len``, in the
    tokenizer of ``source_dir`` (byte-level for nmq's built-in models)."""
    from ..calibration.data import Calibration, calibration_tokens
    from ..runtime.text import ByteTokenizer, load_tokenizer

    if vocab_size is None:
        from ..models.checkpoint import skeleton

        vocab_size = skeleton(source_dir).config.vocab_size
    cal = Calibration(samples=args.samples, seq_len=args.seq_len, text=args.calibration)
    tok = load_tokenizer(source_dir, vocab_size)
    return calibration_tokens(cal, None if isinstance(tok, ByteTokenizer) else tok)


def dense_storage_dtype(requested: str, chatty: bool):
    """The dtype of a checkpoint's dense matrices (embeddings, lm_head), said on stderr: the one asked for, else
    bfloat16, what the in-memory path computes an fp16 source in and an fp32 source rounds to for storage.

    An fp32 embedding is most of a small compressed model's bytes (113 of 155 MB
    for a 135M-parameter model at 2:4 INT4); bfloat16 is what such models ship in.
    """
    import torch

    dtype = torch.bfloat16 if requested == "auto" else getattr(torch, requested)
    say(f"dense matrices (embeddings, lm_head) stored as {str(dtype).removeprefix('torch.')}"
        + (" (--dtype float32 keeps them float32)" if dtype != torch.float32 else ""), chatty)
    return dtype


def cmd_export(args: argparse.Namespace) -> int:
    from ..models.export import export_checkpoint

    r = export_checkpoint(args.checkpoint, args.output, args.to, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    lost = r["sparse_weights_densified"]
    if r["format"] == "gguf":
        requantized = r["requantized"]
        print(f"wrote {args.output}: gguf ({r['architecture']}, {r['bytes'] / 2**20:.1f} MiB), {r['layers']} layers at "
              f"{r['bits_per_weight']:.3f} bits/weight ({', '.join(f'{n} {k}' for k, n in r['types'].items())})"
              + (f"; {len(requantized)} requantized to Q8_0, not exact (first: {requantized[0]})" if requantized else "")
              + (f"; {lost:,} weights of N:M layers written dense (llama.cpp cannot skip them)" if lost else ""))
        return 0
    print(f"wrote {args.output}: {args.to} ({r['format']}), {r['layers']} layers at {r['bits_per_weight']:.3f} "
          f"bits/weight ({', '.join(f'{n} {k}' for k, n in r['groups'].items())})"
          + (f"; {lost:,} weights of N:M layers written dense (the engine cannot skip them)" if lost else ""))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..models.summary import format_table, summarize

    summary = summarize(args.path)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..calibration.data import heldout_path
    from ..runtime.evaluate import perplexity

    path = Path(args.perplexity) if args.perplexity else heldout_path()
    if not path.is_file():
        raise NMQError(f"--perplexity {path}: no such text file")
    model, tok = load_any(args.model, args.backend, progress=not args.quiet)
    text = path.read_bytes()
    if args.max_bytes:
        text = text[: args.max_bytes]
    if args.max_bytes < 0 or args.max_tokens < 0:
        raise NMQError("--max-bytes / --max-tokens: accepted 0 (all) or a positive number")
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    r = perplexity(model, ids, window=args.window, stride=args.stride, progress=not args.quiet)
    record = {"model": str(args.model), "text": str(path), "perplexity": r.perplexity, "bits_per_token": r.bits_per_token,
              "tokens": r.tokens, "window": r.window, "stride": r.stride}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{args.model}: perplexity {r.perplexity:.4f} ({r.bits_per_token:.4f} bits/token) on {r.tokens:,} tokens "
              f"of {path.name} (window {r.window}, stride {r.stride})")
    return 0


def load_any(model: str, backend: str = "auto", path: str = "w4a16", progress: bool = True):
    """(model, tokenizer) from an nmq checkpoint, a Hugging Face directory or a built-in name."""
    from pathlib import Path

    from ..models.checkpoint import load_model
    from ..models.sources import load_source
    from ..runtime.text import load_tokenizer

    if (Path(model) / "nmq.json").exists():
        m, directory = load_model(model, backend=backend, path=path), Path(model)
    else:
        m, directory = load_source(model, progress=progress)
    return m, load_tokenizer(directory, m.config.vocab_size)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..backends import get_backend
    from ..runtime.generate import generate_text
    from ..runtime.linear import NMQLinear

    if args.max_new_tokens < 1:
        raise NMQError(f"--max-new-tokens {args.max_new_tokens}: accepted a positive number")
    get_backend(args.backend)
    model, tok = load_any(args.model, args.backend, args.path, progress=not args.quiet)
    for m in model.modules():
        if isinstance(m, NMQLinear):
            m.set_backend(args.backend, args.path)
    stream = None if args.json else (lambda s: print(s, end="", flush=True))
    if stream and not args.chat:
        print(args.prompt, end="", flush=True)
    r = generate_text(model, tok, args.prompt, args.max_new_tokens, on_text=stream, temperature=args.temperature,
                      chat=args.chat)
    if args.json:
        print(json.dumps({**r.to_dict(), "model": args.model, "backend": args.backend, "path": args.path,
                          "chat": args.chat}, indent=2))
    else:
        decoder = "nmq's lean decoder" if r.decoder == "lean" else "the model's own generate"
        if not r.token_ids:
            # The first token was the end of the sequence: nothing was timed (the end is not printed).
            print(f"\n\nno new tokens: the model ended its answer at once ({r.prompt_tokens} prompt tokens, "
                  f"on {decoder})", file=sys.stderr)
        else:
            print(f"\n\nprefill {r.prefill_ms:.1f} ms ({r.prompt_tokens} tokens), decode {r.ms_per_token:.2f} "
                  f"ms/token (median of {len(r.decode_ms)}), {r.tokens_per_s:.1f} tokens/s, on {decoder}",
                  file=sys.stderr)
    return 0
