"""``nmq``: the command line; each command group lives in its own module (models, bench, apps, hw).

Errors on bad input print one line, ``nmq: error: ...``, and exit with
status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import NMQError


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import apps, bench, hw, models

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
    models.add_parsers(sub, common)
    bench.add_parsers(sub, common)
    apps.add_parsers(sub, common)
    hw.add_parser(sub, common)
    return parser



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
