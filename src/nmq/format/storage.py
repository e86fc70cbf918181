"""Storage accounting: every stored bit, by field, per tensor and in total.

``fields`` split the stored bits into disjoint parts that add up to the
total: ``values``, ``meta``, ``scales``, ``zeros`` (compressed tensors),
``dense`` (tensors kept uncompressed) and ``padding`` (bits stored only
because K was padded to whole groups or rows to whole bytes).

>>> r = Storage(weights=16, fields={"values": 32, "meta": 16})
>>> r.bits_per_weight, r.ratio_vs_fp16
(3.0, 5.333333333333333)
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIELD_ORDER = ("values", "meta", "scales", "zeros", "padding", "dense")


@dataclass
class Storage:
    """Bits stored for ``weights`` logical weights, split by field."""

    weights: int
    fields: dict[str, int] = field(default_factory=dict)

    @property
    def bits(self) -> int:
        return sum(self.fields.values())

    @property
    def bytes(self) -> float:
        return self.bits / 8

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.weights if self.weights else 0.0

    @property
    def ratio_vs_fp16(self) -> float:
        return 16 * self.weights / self.bits if self.bits else 0.0

    @property
    def ratio_vs_fp32(self) -> float:
        return 32 * self.weights / self.bits if self.bits else 0.0

    def __add__(self, other: Storage) -> Storage:
        merged = dict(self.fields)
        for name, bits in other.fields.items():
            merged[name] = merged.get(name, 0) + bits
        return Storage(self.weights + other.weights, merged)

    def to_dict(self) -> dict:
        """JSON-ready summary: bytes, bits/weight, ratios and per-field bits/weight."""
        return {
            "weights": self.weights,
            "bytes": self.bytes,
            "bits_per_weight": self.bits_per_weight,
            "ratio_vs_fp16": self.ratio_vs_fp16,
            "ratio_vs_fp32": self.ratio_vs_fp32,
            "fields": {
                name: {"bits": self.fields[name], "bits_per_weight": self.fields[name] / self.weights if self.weights else 0.0}
                for name in FIELD_ORDER
                if name in self.fields
            },
        }


def total(reports: list[Storage]) -> Storage:
    out = Storage(0, {})
    for r in reports:
        out = out + r
    return out
