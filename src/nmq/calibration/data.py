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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import ModelError

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


@dataclass(frozen=True)
class Calibration:
    """Where calibration samples come from and how many: ``samples`` windows of ``seq_len`` tokens."""

    samples: int = 128
    seq_len: int = 512
    text: str | None = None  # a text file or directory of .txt/.py files; None: the standard library's training split
    seed: int = 0
    batch: int = 8


def calibration_tokens(cal: Calibration, tokenizer=None) -> torch.Tensor:
    """``[samples, seq_len]`` token ids: random windows (seeded) of the calibration text.

    ``tokenizer`` is one of :mod:`nmq.runtime.text`'s (None: byte-level, tokens are UTF-8 bytes).
    """
    if cal.samples < 1 or cal.seq_len < 2:
        raise ModelError(f"calibration of {cal.samples} x {cal.seq_len} tokens; accepted: at least 1 sample of 2 tokens")
    if cal.text is None:
        raw = stdlib_split()[0]
    else:
        path = Path(cal.text)
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".py", ".md")) if path.is_dir() else [path]
        if not files or not all(p.is_file() for p in files):
            raise ModelError(f"calibration text {path} not found; accepted: a text file or a directory of .txt/.py/.md files")
        raw = b"\n\n".join(p.read_bytes() for p in files)
    if tokenizer is None:
        ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    else:
        ids = torch.tensor(tokenizer.encode(raw), dtype=torch.long)
    if len(ids) <= cal.seq_len:
        raise ModelError(f"calibration text has {len(ids)} tokens; needs more than seq_len={cal.seq_len}")
    gen = torch.Generator().manual_seed(cal.seed)
    starts = torch.randint(0, len(ids) - cal.seq_len, (cal.samples,), generator=gen)
    return torch.stack([ids[s : s + cal.seq_len] for s in starts.tolist()])
