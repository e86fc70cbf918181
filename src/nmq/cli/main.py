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
    p.add_argument("--method", default="magnitude", help="compression method: magnitude or rtn (default magnitude)")
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

    p = add("demo", "Compress the built-in model 2:4 + INT4, show storage, check logits, generate text.")
    p.add_argument("--out", metavar="DIR", help="keep the checkpoint in DIR (replaced if it exists)")
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate (default 16)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_compress(args: argparse.Namespace) -> int:
    from ..atomic import check_new_output
    from ..checkpoint import save_checkpoint
    from ..model import compress_model, load_source
    from ..recipe import DEFAULT_IGNORE, Recipe
    from ..summary import format_table, summarize
    from ..weights import compress_weight_file, is_weight_file

    ignore = tuple(args.ignore) + (() if args.compress_lm_head else DEFAULT_IGNORE)
    recipe = Recipe(
        pattern=args.pattern, bits=args.bits, group_size=args.group_size, symmetric=not args.asymmetric,
        metadata=args.metadata, method=args.method, targets=args.targets, ignore=ignore,
    )
    check_new_output(args.output, args.overwrite)
    if is_weight_file(args.source):
        compress_weight_file(args.source, args.output, recipe, overwrite=args.overwrite)
    else:
        _say(args, f"loading {args.source}")
        model, source_dir = load_source(args.source, progress=not args.quiet)
        compress_model(model, recipe, progress=not args.quiet)
        save_checkpoint(model, args.output, source_dir=source_dir, source=args.source, overwrite=args.overwrite)
    summary = summarize(args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        print(f"wrote {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..summary import format_table, summarize

    summary = summarize(args.path)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import format_demo, run_demo

    if args.tokens < 1:
        raise NMQError(f"--tokens {args.tokens}: accepted a positive number of tokens")
    result = run_demo(out_dir=args.out, new_tokens=args.tokens, progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else format_demo(result))
    return 0 if result["check_passed"] else 1


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet and not getattr(args, "json", False):
        print(text, file=sys.stderr)


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
