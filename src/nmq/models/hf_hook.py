"""Register nmq's quantizer with transformers when transformers loads its quantizer registry, not before.

``import nmq`` stays free of transformers (seconds of imports a kernel user
does not need); a script that goes on to ``from_pretrained`` gets the
quantizer registered the moment ``transformers.quantizers.auto`` executes.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

REGISTRY = "transformers.quantizers.auto"


def _register() -> None:
    try:
        from . import hf_quantizer

        hf_quantizer.register()
    except Exception as exc:  # noqa: BLE001 - never break the import of transformers itself
        warnings.warn(f"nmq: checkpoints will not load through transformers' from_pretrained ({exc})", stacklevel=2)


class _AfterRegistry(importlib.abc.MetaPathFinder):
    """Finds the registry's real spec and wraps its loader so that registration follows its execution."""

    def find_spec(self, name, path, target=None):
        if name != REGISTRY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _uninstall()
        _register()


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterRegistry)]


def register_when_imported() -> None:
    """Register now if transformers' registry is loaded, else as soon as it is (idempotent)."""
    if REGISTRY in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterRegistry) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterRegistry())
