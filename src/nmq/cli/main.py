"""``nmq``: compress, inspect and demo.

Errors on bad input print one line, ``nmq: error: ...``, and exit with
status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ..errors import NMQError
from ..progress import say
from .common import chatty

EXAMPLES = {
    "compress": """
        examples:
          nmq compress tiny-llama -o ckpt/tiny-2of4
          nmq compress path/to/hf-llama -o ckpt/llama-4of8 --pattern 4:8 --group-size 64 --asymmetric
          nmq compress weight.npy -o weight.nmq.safetensors --metadata index
    """,
    "inspect": """
        examples:
          nmq inspect ckpt/tiny-2of4
          nmq inspect weight.safetensors --json
    """,
    "demo": """
        example:
          nmq demo
    """,
    "eval": """
        examples:
          nmq eval ckpt/tiny-2of4 --perplexity
          nmq eval ckpt/tiny-2of4 --perplexity notes.txt --window 1024 --stride 512 --json
    """,
    "generate": """
        examples:
          nmq generate tiny-llama --prompt "import os"
          nmq generate ckpt/tiny-2of4 --prompt "def main():" --max-new-tokens 64 --backend reference --json
    """,
    "report": """
        examples:
          nmq report
          nmq report --results benchmarks/results --out report/
    """,
    "bench": """
        examples:
          nmq bench accuracy --json
          nmq bench kernels --shapes llama-7b --layers 3 --batch 1,128 --json
    """,
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of errors")
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    parser = argparse.ArgumentParser(
        prog="nmq",
        description="Compress LLM weights to N:M sparse, low-bit integer form, store them compactly, run them.",
        epilog="Run 'nmq COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"nmq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, parents=[common], help=help_text, description=help_text,
            epilog=textwrap.dedent(EXAMPLES[name]), formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("compress", "Prune and quantize the linear layers of a model and write a checkpoint directory.")
    p.add_argument("source", metavar="SRC", help="a Hugging Face model directory, a built-in model (tiny-llama), "
                   "or a bare weight file (.npy, .safetensors, .pt) of 2-D weights")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="checkpoint directory to write (a .safetensors file for a bare weight file)")
    p.add_argument("--pattern", default="2:4", help="N:M sparsity along K, 1 <= N <= M <= 16; N == M is dense (default 2:4)")
    p.add_argument("--bits", type=int, default=4, help="weight code width: 2, 3, 4 or 8 (default 4)")
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
                   help="dtype to load a Hugging Face model in (default auto: as stored, float16 as bfloat16, "
                        "since float16 matmuls are slow on CPU)")
    p.add_argument("--damp", type=float, default=0.01, help="Hessian damping, fraction of its mean diagonal (default 0.01)")
    p.add_argument("--act-order", action="store_true", help="GPTQ: process columns by decreasing activation energy")
    p.add_argument("--targets", default=".*", metavar="REGEX", help="compress linear layers whose name matches (default all)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="leave matching layers dense (repeatable; lm_head always, unless --compress-lm-head)")
    p.add_argument("--compress-lm-head", action="store_true", help="compress lm_head too")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--json", action="store_true", help="print the storage summary as JSON")
    p.set_defaults(func=cmd_compress)

    p = add("inspect", "Show what a checkpoint or tensor file holds and the storage of every part, bit by bit.")
    p.add_argument("path", metavar="DIR_OR_FILE", help="an nmq checkpoint directory or .safetensors file")
    p.add_argument("--json", action="store_true", help='print {"tensors": [...], "compressed": {...}, "checkpoint": {...}}')
    p.set_defaults(func=cmd_inspect)

    p = add("eval", "Measure a model's perplexity on a text (the held-out reference text by default).")
    p.add_argument("model", metavar="DIR", help="an nmq checkpoint, a Hugging Face model directory, or tiny-llama")
    p.add_argument("--perplexity", nargs="?", const="", metavar="FILE", required=True,
                   help="text file to evaluate on (default: the built-in held-out text)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, default=256, help="tokens between window starts (default 256)")
    p.add_argument("--max-bytes", type=int, default=0, help="evaluate only the first N bytes of the text (default all)")
    p.add_argument("--backend", default="auto", help="backend for compressed layers (default auto)")
    p.add_argument("--json", action="store_true", help='print {"perplexity", "bits_per_token", "tokens", ...}')
    p.set_defaults(func=cmd_eval)

    p = add("generate", "Generate text with a model's KV cache; print prefill time, decode latency and tokens/s.")
    p.add_argument("model", metavar="DIR", help="an nmq checkpoint, a Hugging Face model directory, or tiny-llama")
    p.add_argument("--prompt", default="def ", help="text to continue (default 'def ')")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--backend", default="auto", help="backend of compressed layers: auto, reference, cpu, triton, cusparselt")
    p.add_argument("--path", default="w4a16", choices=["w4a16", "w4a8"], help="numeric path of compressed layers")
    p.add_argument("--temperature", type=float, default=0.0, help="sample with this temperature (default 0: greedy)")
    p.add_argument("--json", action="store_true", help="print the result and timings as JSON instead of streaming")
    p.set_defaults(func=cmd_generate)

    p = add("bench", "Benchmarks: accuracy of compression methods, kernel speed.")
    bench = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    from ..bench import accuracy

    accuracy.add_parser(bench, common)
    from ..bench import e2e

    e2e.add_parser(bench, common)
    try:
        from ..bench import kernels
    except ImportError:
        kernels = None
    if kernels is not None:
        kernels.add_parser(bench, common)

    p = add("report", "Gather the benchmark results present into one HTML page with plots, and a markdown summary.")
    p.add_argument("--results", default="benchmarks/results", metavar="DIR",
                   help="directory of --json results: kernels.json, accuracy.json, e2e.json, hw-explore.json")
    p.add_argument("--out", default="report", metavar="DIR", help="where report.html and report.md go (default report/)")
    p.add_argument("--json", action="store_true", help="print what was included and what is missing as JSON")
    p.set_defaults(func=cmd_report)

    p = add("demo", "Compress the built-in model 2:4 + INT4, show storage, check logits, generate text.")
    p.add_argument("--out", metavar="DIR", help="keep the checkpoint in DIR (replaced if it exists)")
    p.add_argument("--tokens", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_demo)

    from . import hw

    hw.add_parser(sub, common)
    return parser


def cmd_compress(args: argparse.Namespace) -> int:
    from ..atomic import check_new_output
    from ..calibration.run import compress_model
    from ..compress.recipe import DEFAULT_IGNORE, Recipe
    from ..models.checkpoint import save_checkpoint
    from ..models.sources import load_source
    from ..models.summary import format_table, summarize
    from ..models.weight_file import compress_weight_file, is_weight_file

    ignore = tuple(args.ignore) + (() if args.compress_lm_head else DEFAULT_IGNORE)
    recipe = Recipe(
        pattern=args.pattern, bits=args.bits, group_size=args.group_size, symmetric=not args.asymmetric,
        metadata=args.metadata, method=args.method, targets=args.targets, ignore=ignore,
        damp=args.damp, act_order=args.act_order,
    )
    check_new_output(args.output, args.overwrite)
    if is_weight_file(args.source):
        if recipe.needs_calibration:
            raise NMQError(f"method {recipe.method.name!r} needs a model to calibrate; a bare weight file takes magnitude or rtn "
                           "(or call nmq.compress_weight(w, method=..., inputs=X) from Python)")
        compress_weight_file(args.source, args.output, recipe, overwrite=args.overwrite)
    else:
        say(f"loading {args.source}", chatty(args))
        model, source_dir = load_source(args.source, progress=not args.quiet, dtype=args.dtype)
        tokens = None
        if recipe.needs_calibration:
            from ..calibration.data import Calibration, calibration_tokens
            from ..runtime.text import ByteTokenizer, load_tokenizer

            cal = Calibration(samples=args.samples, seq_len=args.seq_len, text=args.calibration)
            tok = load_tokenizer(source_dir, model.config.vocab_size)
            tokens = calibration_tokens(cal, None if isinstance(tok, ByteTokenizer) else tok)
        compress_model(model, recipe, tokens, progress=not args.quiet)
        save_checkpoint(model, args.output, source_dir=source_dir, source=args.source, overwrite=args.overwrite)
    summary = summarize(args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        print(f"wrote {args.output}")
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
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
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
    if stream:
        print(args.prompt, end="", flush=True)
    r = generate_text(model, tok, args.prompt, args.max_new_tokens, on_text=stream, temperature=args.temperature)
    if args.json:
        print(json.dumps({**r.to_dict(), "model": args.model, "backend": args.backend, "path": args.path}, indent=2))
    else:
        print(f"\n\nprefill {r.prefill_ms:.1f} ms ({r.prompt_tokens} tokens), decode {r.ms_per_token:.2f} ms/token "
              f"(median of {len(r.decode_ms)}), {r.tokens_per_s:.1f} tokens/s", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..apps.report import build_report

    r = build_report(args.results, args.out)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"wrote {r['html']} and {r['markdown']}: sections {', '.join(r['sections'])}"
              + (f"; missing results for {', '.join(r['missing'])}" if r["missing"] else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..apps.demo import format_demo, run_demo

    if args.tokens < 1:
        raise NMQError(f"--tokens {args.tokens}: accepted a positive number of tokens")
    result = run_demo(out_dir=args.out, new_tokens=args.tokens, progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else format_demo(result))
    return 0 if result["check_passed"] else 1



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NMQError as exc:
        if args.debug:
            raise
        print(f"nmq: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nmq: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"nmq: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
