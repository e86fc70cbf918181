"""Errors nmq raises on bad input.

Every message says what was wrong, where, and what would be accepted; the CLI
prints it as one line and exits with status 2.
"""


class NMQError(Exception):
    """Base class of every error nmq raises on purpose."""


class PatternError(NMQError, ValueError):
    """An N:M pattern that is malformed or out of range."""


class QuantError(NMQError, ValueError):
    """Quantization settings (bits, group size) that cannot be used."""


class WeightError(NMQError, ValueError):
    """A weight that cannot be compressed (wrong rank, NaN/Inf, ...)."""


class FormatError(NMQError, ValueError):
    """An NMQTensor or checkpoint whose content is invalid or corrupted."""


class BackendError(NMQError, RuntimeError):
    """A backend that is unknown, unavailable, or given inputs it cannot run."""


class RecipeError(NMQError, ValueError):
    """A compression recipe that is malformed."""


class ModelError(NMQError, ValueError):
    """A model source that cannot be loaded or compressed."""


class OutputExistsError(NMQError, FileExistsError):
    """An output path that exists and may not be overwritten."""
