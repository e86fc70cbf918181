"""Files nmq writes: atomically, so that a failed or interrupted write never leaves a half output, and into
nmq's cache directory (what commands keep between runs: GGUF files converted once, measured FPGA clocks).

Files and directories are written under a temporary name beside the target
and renamed into place only once complete. The cache is ``$NMQ_CACHE_DIR``, else
``$XDG_CACHE_HOME/nmq`` or ``~/.cache/nmq``:

>>> import os
>>> saved = os.environ.get("NMQ_CACHE_DIR")
>>> os.environ["NMQ_CACHE_DIR"] = ""
>>> cache_root() is None
True
>>> os.environ["NMQ_CACHE_DIR"] = "/somewhere/nmq"
>>> str(cache_root())
'/somewhere/nmq'
>>> _ = os.environ.pop("NMQ_CACHE_DIR") if saved is None else os.environ.update(NMQ_CACHE_DIR=saved)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        tmp_path.chmod(0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds.

    Without ``overwrite`` an existing ``path`` is refused before any work.
    """
    path = Path(path)
    check_new_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~current_umask())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_new_output(path: str | Path, overwrite: bool) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} exists; pass --overwrite (overwrite=True) to replace it")


def current_umask() -> int:
    """The process's umask: temporary files are created private (0600/0700), outputs get the usual modes."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_root() -> Path | None:
    """The cache directory, or None when ``NMQ_CACHE_DIR`` is set to an empty string (caching off)."""
    env = os.environ.get("NMQ_CACHE_DIR")
    if env is not None:
        return Path(env) if env else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmq"
