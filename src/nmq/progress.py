"""Progress for long work on stderr: bars with counts, rate and ETA, and one-line messages; silent when disabled."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, desc=desc, unit="layer", leave=False, dynamic_ncols=True) as bar:
        for item in bar:
            yield item


def say(text: str, enabled: bool = True) -> None:
    """One progress line on stderr (stdout stays for results and ``--json``)."""
    if enabled:
        print(text, file=sys.stderr, flush=True)
