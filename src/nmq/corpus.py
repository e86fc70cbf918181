"""Text corpora on every Python machine: the standard library's own source.

The ``.py`` files of the running interpreter's standard library (tests
excluded) are split by file: a file whose relative path has CRC-32 divisible
by 16 is held out. The built-in model was trained on the rest; its held-out
text ships with nmq (``heldout_path()``), so accuracy figures reproduce
anywhere, while calibration draws from the training split.
"""

from __future__ import annotations

import pathlib
import sysconfig
import zlib
from importlib import resources

SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
HELDOUT_MAX_BYTES = 1_500_000


def stdlib_split() -> tuple[bytes, bytes]:
    """(training text, held-out text) from this interpreter's standard library."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    train, held = [], []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if any(part in SKIP_PARTS or part.startswith("test_") for part in rel.split("/")):
            continue
        text = p.read_bytes()
        (held if zlib.crc32(rel.encode()) % 16 == 0 else train).append(text)
    return b"\n\n".join(train), b"\n\n".join(held)[:HELDOUT_MAX_BYTES]


def heldout_path() -> pathlib.Path:
    """The held-out text that shipped with nmq (the accuracy table's test set)."""
    return pathlib.Path(str(resources.files("nmq") / "data" / "stdlib-heldout.txt"))
