"""Recipe: what to compress in a model, and how; parsed once into the objects every layer uses.

>>> r = Recipe(pattern="4:8", bits=4, group_size=64)
>>> r.selects("model.layers.0.mlp.up_proj"), r.selects("lm_head")
(True, False)
>>> r.pattern, r.quant, r.method.name
(Pattern(n=4, m=8), QuantSpec(bits=4, group_size=64, symmetric=True), 'magnitude')
>>> Recipe.from_dict(r.to_dict()) == r
True
>>> p = Recipe(bits=16, method="sparsegpt")    # prune only: the kept values stay 16-bit floats
>>> p.quant, p.group_size
(None, -1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from ..errors import NMQError, QuantError, RecipeError
from ..format.pattern import Pattern, check_encoding
from ..format.spec import FLOAT_BITS, SUPPORTED_BITS, QuantSpec
from ..format.tensor import check_group
from .methods import Method, get_method, prune_only_names

DEFAULT_IGNORE = (r"(^|\.)lm_head$",)


@dataclass(frozen=True)
class Recipe:
    """Pattern and quantization for every ``nn.Linear`` whose name matches
    ``targets`` (regex, searched) and none of ``ignore``. Embeddings and norms
    are never compressed; ``lm_head`` is left dense unless removed from ``ignore``.

    ``pattern`` and ``method`` may be given as names; they are held parsed
    (a :class:`Pattern`, a registered :class:`Method`), and ``quant`` is the
    :class:`QuantSpec` of ``bits``, ``group_size`` and ``symmetric``.

    ``bits=16`` prunes only: ``quant`` is None, the kept values are stored as
    16-bit floats, ``group_size`` is held as -1 (whatever was given: there is
    nothing to group) and the method must be a pruning rule alone.

    ``recover``: passes over the calibration samples of block-wise recovery
    after each block is compressed (:mod:`nmq.calibration.recover`; 0: none).
    """

    pattern: Pattern = "2:4"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    metadata: str = "rank"
    method: Method = "magnitude"
    damp: float = 0.01
    act_order: bool = False
    recover: int = 0
    targets: str = r".*"
    ignore: tuple[str, ...] = field(default=DEFAULT_IGNORE)
    quant: QuantSpec | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            pattern = Pattern.parse(self.pattern)
            method = get_method(self.method)
            if self.bits == FLOAT_BITS:
                quant = None
                _check_prune_only(method, self.symmetric)
                object.__setattr__(self, "group_size", -1)
            elif self.bits not in SUPPORTED_BITS:
                raise QuantError(f"bits={self.bits} is not supported; accepted: "
                                 f"{', '.join(map(str, SUPPORTED_BITS))} (integer codes) or {FLOAT_BITS} (prune only, "
                                 "kept values stored as 16-bit floats)")
            else:
                quant = QuantSpec(self.bits, self.group_size, self.symmetric)
            check_group(pattern, self.group_size)
            check_encoding(self.metadata)
        except NMQError as exc:
            raise type(exc)(f"recipe: {exc}") from None
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "quant", quant)
        object.__setattr__(self, "method", method)
        if not 0 < self.damp < 1:
            raise RecipeError(f"recipe: damp {self.damp} is out of range; accepted: 0 < damp < 1 (default 0.01)")
        if not (isinstance(self.recover, int) and 0 <= self.recover <= 100):
            raise RecipeError(f"recipe: recover {self.recover!r}; accepted: 0 (no recovery) to 100 passes")
        if self.recover and not method.needs_calibration:
            raise RecipeError(f"recipe: recover tunes blocks on calibration data, and method {method.name!r} takes "
                              "none; accepted with recover: wanda, sparsegpt, gptq, wanda+gptq")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        for rx in (self.targets, *self.ignore):
            try:
                re.compile(rx)
            except re.error as exc:
                raise RecipeError(f"recipe: {rx!r} is not a valid regular expression ({exc})") from None

    def selects(self, name: str) -> bool:
        """Whether the linear layer called ``name`` is compressed."""
        return re.search(self.targets, name) is not None and not any(re.search(rx, name) for rx in self.ignore)

    def to_dict(self) -> dict:
        """The recipe as JSON-ready names and numbers (what ``nmq.json`` records)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        d["pattern"] = str(self.pattern)
        d["method"] = self.method.name
        d["ignore"] = list(self.ignore)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls) if f.init}
        unknown = set(d) - known
        if unknown:
            raise RecipeError(f"recipe: unknown field(s) {sorted(unknown)}; accepted: {sorted(known)}")
        return cls(**d)

    @property
    def needs_calibration(self) -> bool:
        return self.method.needs_calibration


def _check_prune_only(method: Method, symmetric: bool) -> None:
    if not method.prunes_only:
        raise RecipeError(f"method {method.name!r} quantizes, and bits {FLOAT_BITS} does not; accepted with bits "
                          f"{FLOAT_BITS}: {', '.join(prune_only_names())}")
    if not symmetric:
        raise QuantError(f"bits {FLOAT_BITS} stores 16-bit float values, which have no zero points; accepted: "
                         "symmetric (the default)")
