"""What every command shares."""

from __future__ import annotations

import argparse


def chatty(args: argparse.Namespace) -> bool:
    """Whether progress lines go to stderr: not with ``--quiet``, nor beside ``--json`` records."""
    return not args.quiet and not getattr(args, "json", False)
