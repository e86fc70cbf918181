"""What an ``nmq bench e2e`` configuration decodes with: its random-weight model, or the accelerator's cycle model.

Models are built with random weights directly in their final form
(:mod:`nmq.models.synthetic`): compressed configurations never hold a dense
copy, and keep each linear layer in its backend's packed form only.
Embeddings and norms are bf16 in every configuration; the nmq configurations
also store ``lm_head`` as dense INT4.
"""

from __future__ import annotations

import torch

from ...backends import get_backend
from ...backends.cpu import matmul as cpu_backend
from ...compress.recipe import Recipe
from ...format.pattern import Pattern
from ...hw.config import AcceleratorConfig
from ...hw.estimate.clocks import ClockChoice, clock_for
from ...hw.estimate.cycle_model import model_estimate
from ...models.synthetic import llama_model
from ...shapes import SHAPES
from .configs import Config

# The design `nmq hw explore --budget zcu104 --model llama-7b` chooses at batch 1
# (benchmarks/results/hw-explore.json); its bandwidth is an assumption, and so is its
# clock unless a place-and-route record of it on FPGA_DEVICE exists (fpga_clock).
FPGA_DESIGN = {"rows": 128, "cols": 1, "max_m": 8, "weight_bits": 4, "act_buffer_depth": 3072, "clock_mhz": 300.0,
               "bandwidth_gbs": 19.2}
FPGA_DEVICE = ("zcu104", "xczu7ev")


def build(config: Config, model_name: str, backend: str, threads: int, path: str = "w4a8"):
    """The configuration's model, ready to decode, and the name of the backend its linear layers run on."""
    if config.kind == "torch":
        torch.set_num_threads(threads)
        return llama_model(SHAPES[model_name], None, dtype=config.dtype), "torch"
    used = get_backend(backend, "cpu", 1).name
    if used == "cpu":
        # nmq's pool runs the linear layers on every core; PyTorch's ops
        # around them are tiny at batch 1, and two busy pools on the same
        # cores only get in each other's way.
        cpu_backend.set_threads(threads)
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(threads)
    model = llama_model(SHAPES[model_name], Recipe(pattern=config.pattern, bits=4, group_size=128), backend=backend,
                        dtype=torch.bfloat16, release_source=True, path=path,
                        head=Recipe(pattern="dense", bits=4, group_size=128, ignore=()))
    return model, used


def decode_record(config: Config, model_name: str, ms_per_token: float, prefill_ms: float | None,
                  peak_rss_gb: float | None, backend: str, **more) -> dict:
    """The fields every row has, measured or estimated, then the row's own."""
    return {"config": config.name, "model": model_name, "ms_per_token": ms_per_token,
            "tokens_per_s": 1000.0 / ms_per_token, "prefill_ms": prefill_ms, "peak_rss_gb": peak_rss_gb,
            "backend": backend, **more}


def fpga_clock() -> ClockChoice:
    """The clock of FPGA_DESIGN: measured where it was placed and routed on FPGA_DEVICE, else its assumed one."""
    return clock_for(AcceleratorConfig(**FPGA_DESIGN), FPGA_DEVICE, FPGA_DESIGN["clock_mhz"])


def fpga_estimate(config: Config, model_name: str) -> dict:
    """Decode throughput of the generated accelerator from its cycle model (no simulation, no measurement)."""
    p = Pattern.parse(config.pattern)
    clock = fpga_clock()
    e = model_estimate(AcceleratorConfig(**{**FPGA_DESIGN, "clock_mhz": clock.mhz}), model=model_name,
                       pattern=(p.n, p.m), bits=4, group=128, tokens=1)
    return decode_record(config, model_name, 1000 / e["tokens_per_second"], None, None, "fpga-cycle-model",
                         design=FPGA_DESIGN, cycles_per_token=e["cycles"], compute_cycles_per_token=e["compute_cycles"],
                         device=FPGA_DEVICE[0], **clock.to_dict())
