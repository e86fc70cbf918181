"""The configurations ``nmq bench e2e`` compares, one row each.

>>> [c.name for c in parse_configs("nmq-2:4-int4,torch-bf16")]
['nmq-2:4-int4', 'torch-bf16']
>>> CONFIGS["fpga-model-4:8-int4"].kind, CONFIGS["fpga-model-4:8-int4"].pattern
('fpga-model', '4:8')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..common import parse_names

Kind = Literal["torch", "nmq", "fpga-model"]


@dataclass(frozen=True)
class Config:
    """``torch``: PyTorch's dense model in ``dtype``; ``nmq``: INT4 layers of ``pattern`` on an nmq backend;
    ``fpga-model``: the generated accelerator's cycle model for ``pattern`` (an estimate, no process, no model),
    at the clock its row names with its source (``clock_mhz``, ``clock_source``: measured or assumed)."""

    name: str
    kind: Kind
    pattern: str | None = None
    dtype: torch.dtype | None = None


CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("torch-bf16", "torch", dtype=torch.bfloat16),
    Config("torch-fp32", "torch", dtype=torch.float32),
    Config("nmq-dense-int4", "nmq", "dense"),
    Config("nmq-2:4-int4", "nmq", "2:4"),
    Config("nmq-4:8-int4", "nmq", "4:8"),
    Config("fpga-model-dense-int4", "fpga-model", "dense"),
    Config("fpga-model-2:4-int4", "fpga-model", "2:4"),
    Config("fpga-model-4:8-int4", "fpga-model", "4:8"),
)}
DEFAULT_CONFIGS = ("torch-bf16", "nmq-dense-int4", "nmq-2:4-int4", "nmq-4:8-int4")


def parse_configs(text: str) -> list[Config]:
    """``--configs``: comma-separated names of :data:`CONFIGS`; an unknown one is refused, naming the accepted."""
    return [CONFIGS[name] for name in parse_names(text, "--configs", CONFIGS)]
