"""What every command shares: the quiet/json convention and how a command is declared."""

from __future__ import annotations

import argparse
import textwrap


def chatty(args: argparse.Namespace) -> bool:
    """Whether progress lines go to stderr: not with ``--quiet``, nor beside ``--json`` records."""
    return not args.quiet and not getattr(args, "json", False)


def command(sub, common: argparse.ArgumentParser, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand with the shared options, its help as description, and its examples as epilog."""
    return sub.add_parser(name, parents=[common], help=help_text, description=help_text,
                          epilog=textwrap.dedent(examples), formatter_class=argparse.RawDescriptionHelpFormatter)
