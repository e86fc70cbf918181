"""The C++ extension behind the cpu backend: loading it, its ISA level, its threads.

``NMQ_CPU_ISA=avx512|avx2|portable`` forces the instruction set (:func:`set_isa`
does the same at run time); ``NMQ_THREADS`` or :func:`set_threads` sets the
thread count (default: the CPUs this process may run on). Every module of the
backend calls :func:`require` and :func:`apply_env` before it uses
:data:`native`.
"""

from __future__ import annotations

import os

from ...errors import BackendError

ISA_ENV = "NMQ_CPU_ISA"

try:  # the extension is optional at import time: the backend reports why it cannot run
    from ...kernels.cpu import _nmq_cpu as native

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    native = None
    IMPORT_ERROR = (f"the C++ extension nmq.kernels.cpu._nmq_cpu is not built or failed to load ({exc}); "
                    "reinstall with 'pip install .'")

_ISA_APPLIED: str | None = None


def require() -> None:
    """Raise :class:`BackendError` saying why when the extension is not there."""
    if native is None:
        raise BackendError(f"backend 'cpu' is not available here: {IMPORT_ERROR}")


def apply_env() -> None:
    """Apply NMQ_CPU_ISA whenever it changed since last looked at."""
    global _ISA_APPLIED
    want = os.environ.get(ISA_ENV, "")
    if want == (_ISA_APPLIED or ""):
        return
    if want:
        set_isa(want)
    else:
        native.set_isa(native.isa_levels()[0])
    _ISA_APPLIED = want


def unavailable_reason() -> str | None:
    """None when the extension runs here at the level NMQ_CPU_ISA asks for, else why not."""
    if native is None:
        return IMPORT_ERROR
    want = os.environ.get(ISA_ENV)
    if want and want not in native.isa_levels():
        return f"{ISA_ENV}={want} is not available on this CPU; available: {', '.join(native.isa_levels())}"
    return None


def isa_levels() -> list[str]:
    """ISA levels this CPU and build can run, best first."""
    require()
    return list(native.isa_levels())


def set_isa(level: str) -> None:
    """Force the instruction set the kernels use: ``avx512``, ``avx2`` or ``portable``."""
    require()
    try:
        native.set_isa(level)
    except ValueError as exc:
        raise BackendError(str(exc)) from None


def get_isa() -> str:
    require()
    apply_env()
    return native.get_isa()


def set_threads(n: int) -> None:
    """Threads the kernels use, the calling thread included."""
    require()
    if not isinstance(n, int) or n < 1:
        raise BackendError(f"thread count {n!r} is invalid; accepted: a positive integer")
    native.set_threads(n)


def get_threads() -> int:
    require()
    return native.get_threads()
