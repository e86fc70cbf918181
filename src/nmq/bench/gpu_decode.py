"""``nmq bench e2e --device cuda``: batch-1 decoding of a random-weight LLaMA on the GPU.

Configurations, built one after another in this process (the GPU holds one
model at a time), each decoded ``--rounds`` times after an untimed warm-up:

* ``torch-fp16``: the dense model in fp16 (cuBLAS);
* ``nmq-dense-int4``: every linear layer dense INT4 (group 128) on nmq's Triton kernel;
* ``nmq-2:4-int4``: the decoder's linear layers 2:4 INT4 (group 128) on nmq's
  Triton kernel, ``lm_head`` dense INT4 as in the CPU rows;
* ``cusparselt-2:4-int4``: the same 2:4 INT4 layers dequantized once to fp16 on
  2:4 sparse tensor cores (the ``cusparselt`` backend), ``lm_head`` fp16.

Decoding runs through the same lean decoder as on the CPU (PyTorch's ops for
attention and norms on the GPU). A step's time is the host's wall clock
between tokens: each token is copied back to the host, which waits for the
GPU, so launch overheads count, as a user sees them. ``floor_ms`` is the
bytes of the weights read per token (every linear layer, the embedding row
aside) over the copy bandwidth measured in the same process. ``--out FILE``
writes the records so far after every configuration.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch

from ..compress.recipe import Recipe
from ..models.synthetic import llama_model
from ..progress import say
from ..runtime.generate import generate_ids
from ..shapes import SHAPES
from .common import at_least, parse_names
from .gpu import GpuBenchError, measure_bandwidth, write_records

WARMUP_TOKENS = 4


@dataclass(frozen=True)
class GpuConfig:
    name: str
    pattern: str | None  # None: the dense fp16 model
    backend: str | None = None
    head_int4: bool = True


GPU_CONFIGS = {c.name: c for c in (
    GpuConfig("torch-fp16", None),
    GpuConfig("nmq-dense-int4", "dense", "triton"),
    GpuConfig("nmq-2:4-int4", "2:4", "triton"),
    GpuConfig("cusparselt-2:4-int4", "2:4", "cusparselt", head_int4=False),
)}


def parse_gpu_configs(text: str | None) -> list[GpuConfig]:
    """``--configs`` on cuda: names of :data:`GPU_CONFIGS` (default all)."""
    names = parse_names(text, "--configs", GPU_CONFIGS, GpuBenchError) if text else list(GPU_CONFIGS)
    return [GPU_CONFIGS[n] for n in names]


def build(config: GpuConfig, shape: dict) -> torch.nn.Module:
    """The configuration's model on the GPU, its compressed layers packed there and nowhere else."""
    if config.pattern is None:
        return llama_model(shape, None, dtype=torch.float16, device="cuda")
    head = Recipe(pattern="dense", bits=4, group_size=128, ignore=()) if config.head_int4 else None
    return llama_model(shape, Recipe(pattern=config.pattern, bits=4, group_size=128), backend=config.backend,
                       dtype=torch.float16, release_source=True, path="w4a16", head=head, device="cuda")


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of every linear layer's weight as the GPU holds it (what one decode step reads)."""
    from ..runtime.linear import NMQLinear

    total = 0
    for module in model.modules():
        if isinstance(module, NMQLinear):
            total += sum(packed.nbytes for packed in module._packed.values())
        elif isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def decode(config: GpuConfig, model_name: str, shape: dict, prompt: int, new: int, rounds: int,
           bandwidth: float, note) -> dict:
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build(config, shape)
    build_s = time.perf_counter() - start
    ids = torch.randint(0, shape["vocab_size"], (1, prompt), generator=torch.Generator().manual_seed(0)).cuda()
    generate_ids(model, ids, WARMUP_TOKENS)  # Triton's autotuning and the first launches happen here
    steps, prefills = [], []
    for _ in range(rounds):
        r = generate_ids(model, ids, new)
        steps += r.decode_ms
        prefills.append(r.prefill_ms)
    weight_bytes = linear_bytes(model)
    ms = statistics.median(steps)
    note(f"  {config.name}: {ms:.2f} ms/token, prefill {statistics.median(prefills):.1f} ms (built in {build_s:.0f} s)")
    del model
    torch.cuda.empty_cache()
    return {"config": config.name, "model": model_name, "layers": shape["num_hidden_layers"], "device": "cuda",
            "backend": config.backend or "torch", "ms_per_token": ms, "tokens_per_s": 1000.0 / ms,
            "prefill_ms": statistics.median(prefills), "prompt_tokens": prompt, "new_tokens": new, "rounds": rounds,
            "decode_ms": steps, "weight_bytes": weight_bytes, "floor_ms": weight_bytes / bandwidth * 1e3,
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30, "build_s": build_s,
            "gpu": torch.cuda.get_device_name(0)}


def run(args: argparse.Namespace) -> list[dict]:
    """The records of ``nmq bench e2e --device cuda``; GpuBenchError without a CUDA device."""
    if not torch.cuda.is_available():
        raise GpuBenchError("bench e2e --device cuda needs a CUDA device and none is visible "
                            "(torch.cuda.is_available() is False)")
    configs = parse_gpu_configs(args.configs)
    shape = dict(SHAPES[args.model])
    if args.layers is not None:
        shape["num_hidden_layers"] = at_least(args.layers, "--layers", 1, GpuBenchError)
    prompt = at_least(args.prompt_tokens, "--prompt-tokens", 1, GpuBenchError)
    new = at_least(args.new_tokens, "--new-tokens", 2, GpuBenchError)
    rounds = at_least(args.rounds, "--rounds", 1, GpuBenchError)
    note = partial(say, enabled=not args.quiet)
    bandwidth = measure_bandwidth()
    note(f"{torch.cuda.get_device_name(0)}: copy bandwidth {bandwidth / 1e9:.0f} GB/s; {args.model}, "
         f"{shape['num_hidden_layers']} layers")
    records = []
    for c in configs:
        records.append(decode(c, args.model, shape, prompt, new, rounds, bandwidth, note))
        if getattr(args, "out", None):
            write_records(args.out, records)
    return records


def format_table(records: list[dict]) -> str:
    head = f"{'config':<22} {'ms/token':>9} {'tokens/s':>9} {'prefill ms':>11} {'floor ms':>9} {'weights GB':>11}"
    lines = [f"{records[0]['gpu']}: {records[0]['model']}, {records[0]['layers']} layers, batch 1", head,
             "-" * len(head)] if records else ["no configuration ran"]
    for r in records:
        lines.append(f"{r['config']:<22} {r['ms_per_token']:>9.2f} {r['tokens_per_s']:>9.1f} {r['prefill_ms']:>11.1f} "
                     f"{r['floor_ms']:>9.2f} {r['weight_bytes'] / 1e9:>11.2f}")
    return "\n".join(lines)
