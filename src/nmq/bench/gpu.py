"""``nmq bench kernels --device cuda``: nmq's GPU kernels beside cuBLAS and cuSPARSELt.

Kernels, all on the same activations in one process, interleaved pass by pass:

* ``cublas-fp16``: the dense fp16 weight, ``F.linear`` (cuBLAS);
* ``nmq-dense-int4``: the dense INT4 weight (group 128), nmq's Triton kernel;
* ``cusparselt-2:4-fp16``: the fp16 weight pruned 2:4, ``to_sparse_semi_structured``;
* ``nmq-2:4-int4``: the 2:4 INT4 weight (group 128), nmq's Triton kernel;
* ``cusparselt-2:4-from-int4``: the same 2:4 INT4 weight through the
  ``cusparselt`` backend (dequantized once to fp16, 2:4 sparse tensor cores).

Shapes: 4096x4096 (``--shapes square``), the distinct matrices of a LLaMA-7B
decoder layer (``llama-7b``: 4096x4096, 11008x4096, 4096x11008), both
(``all``, the default) or ``--shape OUTxIN``. Batches 1, 16, 64, 128.

Every figure is the median over ``--runs`` passes (after ``--warmup`` passes,
which also run Triton's autotuning) of CUDA-event time for one pass over
enough copies of the weight that they exceed four times the L2 cache (or
``--layers`` copies if that is more), divided by the copies. A pass is timed
twice, both ways interleaved: replayed from a CUDA graph (``graph_ms``: the
kernels' device time, as a serving engine that captures its decode step sees
it) and launched from Python (``eager_ms``: each call's host work included;
on a slow host a batch-1 kernel waits for its own launch). ``median_ms`` and
the ratios are the graph's figures where the pass could be captured, else the
eager ones (``timing`` says which, ``graph_error`` why not). Each record::

    {"name", "backend", "shape", "batch", "median_ms", "graph_ms", "eager_ms", "timing",
     "speedup_vs_cublas", "weight_bytes", "bytes", "gb_s", "tflops", "bw_fraction",
     "tflops_fraction", "floor_ms", "copies", "device"}

``--out FILE`` writes the records so far after every batch, so a run cut
short still leaves what it measured.

``bytes`` counts the weight bytes as stored plus fp16 activations and the
output; ``tflops`` counts the dense-equivalent ``2 * batch * out * in``
operations. Peaks are measured in the same process: device-to-device copy
bandwidth and a large cuBLAS fp16 matmul (the dense tensor-core rate).
``floor_ms`` is the larger of bytes over measured bandwidth and operations
over measured peak.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from ..errors import NMQError
from ..progress import say
from ..shapes import linear_shapes
from .common import BenchError, check_runs, parse_ints, parse_names, select_shapes

SHAPE_SETS = {"square": [("square", 4096, 4096)], "llama-7b": linear_shapes("llama-7b")}
SHAPE_SETS["all"] = SHAPE_SETS["llama-7b"]
KERNELS = ("cublas-fp16", "nmq-dense-int4", "cusparselt-2:4-fp16", "nmq-2:4-int4", "cusparselt-2:4-from-int4")
DEFAULT_BATCHES = "1,16,64,128"
MAX_COPY_BYTES = 8 << 30


class GpuBenchError(BenchError):
    """Bad options for the GPU benchmark, or a machine it cannot run on."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``run_gpu`` reads (it also accepts the CPU benchmark's namespace)."""
    p.add_argument("--shapes", default="all", help="square (4096x4096), llama-7b, or all (default)")
    p.add_argument("--shape", metavar="OUTxIN", help="one matrix instead of --shapes, e.g. 4096x4096")
    p.add_argument("--batch", default=DEFAULT_BATCHES, help=f"comma-separated token counts (default {DEFAULT_BATCHES})")
    p.add_argument("--kernels", help=f"comma-separated subset of: {', '.join(KERNELS)} (default all)")
    p.add_argument("--layers", type=int, default=1,
                   help="at least this many weight copies, rotated (default: enough to exceed 4x L2)")
    p.add_argument("--runs", type=int, default=20, help="timed passes per row, at least 10 (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes first, autotuning included (default 3)")
    p.add_argument("--json", action="store_true", help="print the records as a JSON list")
    p.add_argument("--out", metavar="FILE", help="also write the records as JSON to FILE, rewritten after every batch")


@dataclass
class Case:
    name: str
    backend: str
    weight_bytes: int
    calls: list[Callable[[torch.Tensor], torch.Tensor]]

    def run(self, x: torch.Tensor) -> None:
        for call in self.calls:
            call(x)


@dataclass
class Timed:
    """One case's pass on one input: eager, and from a CUDA graph where it could be captured."""

    case: Case
    graph: torch.cuda.CUDAGraph | None
    graph_error: str | None
    eager: list[float]
    replayed: list[float]


def capture(case: Case, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph | None, str | None]:
    """A CUDA graph of one pass of ``case`` (after its warm-up), or None and the first line of why not."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            case.run(x)
    except Exception as exc:  # noqa: BLE001 - a kernel that cannot be captured is timed eagerly instead
        torch.cuda.synchronize()
        return None, (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:200]
    return graph, None


def run_gpu(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit status (GpuBenchError without CUDA)."""
    if not torch.cuda.is_available():
        raise GpuBenchError("bench kernels --device cuda needs a CUDA device and none is visible "
                            "(torch.cuda.is_available() is False)")
    records = _run(args)
    print(json.dumps(records, indent=2) if args.json else format_table(records))
    return 0


def _run(args: argparse.Namespace) -> list[dict]:
    shapes = _shapes(args)
    batches = _batches(args.batch or DEFAULT_BATCHES)
    kernels = _kernels(args.kernels)
    runs, warmup = check_runs(args.runs, GpuBenchError), max(1, args.warmup)
    min_copies = max(1, args.layers)
    note = partial(say, enabled=not args.quiet)
    props = torch.cuda.get_device_properties(0)
    device = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    kernels = _runnable(kernels, note)
    note(f"{device}: measuring peaks")
    bandwidth, peak = measure_bandwidth(), measure_fp16_peak()
    note(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s, cuBLAS fp16 {peak / 1e12:.0f} TFLOP/s")
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    records: list[dict] = []
    gen = torch.Generator().manual_seed(0)
    for out, k in shapes:
        note(f"{out}x{k}: building weights")
        cases = _build(out, k, kernels, l2, min_copies, gen)
        for batch in batches:
            x = torch.randn(batch, k, generator=gen).half().cuda()
            timed = _time(cases, x, runs, warmup)
            base = timed.get("cublas-fp16")
            for case in cases:
                t = timed[case.name]
                ms = t["median_ms"]
                moved = case.weight_bytes + 2 * batch * k + 4 * batch * out
                flops = 2 * batch * out * k
                records.append({
                    "name": case.name, "backend": case.backend, "shape": [out, k], "batch": batch, **t,
                    "speedup_vs_cublas": _ratio(base, t),
                    "weight_bytes": case.weight_bytes, "bytes": moved,
                    "gb_s": moved / ms / 1e6, "tflops": flops / ms / 1e9,
                    "bw_fraction": moved / ms / 1e-3 / bandwidth, "tflops_fraction": flops / ms / 1e-3 / peak,
                    "floor_ms": max(moved / bandwidth, flops / peak) * 1e3,
                    "copies": len(case.calls), "device": device,
                })
            note(f"  batch {batch}: done")
            if getattr(args, "out", None):
                write_records(args.out, records)
        del cases
        torch.cuda.empty_cache()
    return records


def _shapes(args) -> list[tuple[int, int]]:
    """The distinct matrices: a decoder layer's that share a shape would time the same kernel again."""
    chosen = select_shapes(args.shape, args.shapes or "all", SHAPE_SETS, GpuBenchError)
    return list(dict.fromkeys((o, i) for _, o, i in chosen))


def _batches(text: str) -> list[int]:
    return parse_ints(text, "--batch", 65536, GpuBenchError)


def _kernels(text: str | None) -> list[str]:
    return parse_names(text, "--kernels", KERNELS, GpuBenchError) if text else list(KERNELS)


def _runnable(kernels: list[str], note: Callable[[str], None]) -> list[str]:
    from ..backends.cusparselt import CusparseltBackend
    from ..backends.triton import TritonBackend

    keep = []
    for name in kernels:
        if name.startswith("nmq-"):
            reason = TritonBackend().unavailable_reason()
        elif name.startswith("cusparselt-"):
            reason = CusparseltBackend().unavailable_reason()
        else:
            reason = None
        if reason:
            note(f"skipping {name}: {reason}")
        else:
            keep.append(name)
    return keep


def _copies(weight_bytes: int, l2: int, min_copies: int) -> int:
    n = max(min_copies, math.ceil(4 * l2 / max(weight_bytes, 1)))
    return max(1, min(n, MAX_COPY_BYTES // max(weight_bytes, 1)))


def _tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _build(out: int, k: int, kernels: list[str], l2: int, min_copies: int, gen) -> list[Case]:
    import torch.nn.functional as F

    from .. import compress_weight
    from ..backends.cusparselt import CusparseltBackend
    from ..backends.triton import TritonBackend

    w = torch.randn(out, k, generator=gen)
    cases: list[Case] = []
    need_24 = any(n in kernels for n in ("nmq-2:4-int4", "cusparselt-2:4-from-int4", "cusparselt-2:4-fp16"))
    t24 = compress_weight(w, pattern="2:4", bits=4, group_size=128) if need_24 else None
    for name in kernels:
        if name == "cublas-fp16":
            dense = w.half().cuda()
            size = _tensor_bytes(dense)
            ws = [dense.clone() for _ in range(_copies(size, l2, min_copies))]
            cases.append(Case(name, "torch", size, [lambda x, m=m: F.linear(x, m) for m in ws]))
        elif name.startswith("nmq-"):
            pattern = "dense" if name == "nmq-dense-int4" else "2:4"
            t = t24 if pattern == "2:4" else compress_weight(w, pattern="dense", bits=4, group_size=128)
            backend = TritonBackend()
            packed = backend.prepack(t)
            size = packed.nbytes
            copies = [packed] + [_clone_packed(packed) for _ in range(_copies(size, l2, min_copies) - 1)]
            cases.append(Case(name, "triton", size, [lambda x, p=p, b=backend: b.matmul(x, p) for p in copies]))
        elif name == "cusparselt-2:4-fp16":
            from torch.sparse import (
                SparseSemiStructuredTensor,
                to_sparse_semi_structured,
            )

            from ..backends.cusparselt import semi_structured_bytes, sparse_kernel_name

            kernel = sparse_kernel_name()
            SparseSemiStructuredTensor._FORCE_CUTLASS = kernel == "cutlass"
            mask = t24.to_dense() != 0  # the same 2:4 positions, fp16 values
            dense = (w * mask).half().cuda()
            sparse = to_sparse_semi_structured(dense)
            size = semi_structured_bytes(sparse)
            ws = [sparse] + [to_sparse_semi_structured(dense.clone()) for _ in range(_copies(size, l2, min_copies) - 1)]
            del dense
            cases.append(Case(name, f"torch-{kernel}", size, [lambda x, m=m: F.linear(x, m) for m in ws]))
        elif name == "cusparselt-2:4-from-int4":
            backend = CusparseltBackend()
            first = backend.prepack(t24)
            size = first.nbytes
            packs = [first] + [backend.prepack(t24) for _ in range(_copies(size, l2, min_copies) - 1)]
            cases.append(Case(name, "cusparselt", size, [lambda x, p=p, b=backend: b.matmul(x, p) for p in packs]))
    return cases


def _clone_packed(p):
    return replace(p, values=p.values.clone(), meta=p.meta.clone(), scales=p.scales.clone(),
                   zeros=None if p.zeros is None else p.zeros.clone())


def _event_ms(fn: Callable[[], object]) -> float:
    """Milliseconds of device time ``fn``'s work takes, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _median_s(fn: Callable[[], object], runs: int) -> float:
    # The first two passes pay for allocation and clock ramp-up.
    return statistics.median([_event_ms(fn) for _ in range(runs + 2)][2:]) / 1e3


def _time(cases: list[Case], x: torch.Tensor, runs: int, warmup: int) -> dict[str, dict]:
    """Per case: ``median_ms`` (graph where captured, else eager), ``graph_ms``, ``eager_ms``, ``timing``."""
    for _ in range(warmup):
        for case in cases:
            case.run(x)
    torch.cuda.synchronize()
    timed = [Timed(case, *capture(case, x), [], []) for case in cases]
    for _ in range(runs):
        for t in timed:
            copies = len(t.case.calls)
            t.eager.append(_event_ms(partial(t.case.run, x)) / copies)
            if t.graph is not None:
                t.replayed.append(_event_ms(t.graph.replay) / copies)
    out = {}
    for t in timed:
        eager = statistics.median(t.eager)
        graph = statistics.median(t.replayed) if t.replayed else None
        out[t.case.name] = {"median_ms": graph if graph is not None else eager, "graph_ms": graph,
                            "eager_ms": eager, "timing": "graph" if graph is not None else "eager",
                            "graph_error": t.graph_error}
    return out


def _ratio(base: dict | None, t: dict) -> float | None:
    """cuBLAS's time over this one's, both timed the same way (graph where both were captured)."""
    if base is None:
        return None
    if base["graph_ms"] is not None and t["graph_ms"] is not None:
        return base["graph_ms"] / t["graph_ms"]
    return base["eager_ms"] / t["eager_ms"]


def write_records(path: str, records: list[dict]) -> None:
    """``records`` as a JSON list at ``path``, replaced whole (never half-written)."""
    from ..files import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(records, indent=2))


def measure_bandwidth(nbytes: int = 1 << 30, runs: int = 10) -> float:
    """Device memory bandwidth in bytes/s: a large device-to-device copy (read + write)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_s(lambda: dst.copy_(src), runs)


def measure_fp16_peak(n: int = 8192, runs: int = 10) -> float:
    """Dense fp16 tensor-core rate in FLOP/s: a large cuBLAS matmul."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    return 2 * n**3 / _median_s(lambda: torch.mm(a, b), runs)


def format_table(records: list[dict]) -> str:
    if not records:
        return "no kernel could run here"
    head = (f"{'kernel':<26} {'shape':>11} {'batch':>5} {'ms':>9} {'eager ms':>9} {'x cuBLAS':>8} "
            f"{'GB/s':>7} {'%BW':>5} {'TFLOP/s':>8} {'%peak':>6} {'floor ms':>9}")
    lines = [f"device: {records[0]['device']}", head, "-" * len(head)]
    for r in records:
        speed = f"{r['speedup_vs_cublas']:.2f}" if r["speedup_vs_cublas"] else "-"
        lines.append(
            f"{r['name']:<26} {'x'.join(map(str, r['shape'])):>11} {r['batch']:>5} {r['median_ms']:>9.4f} "
            f"{r['eager_ms']:>9.4f} {speed:>8} "
            f"{r['gb_s']:>7.0f} {100 * r['bw_fraction']:>5.0f} {r['tflops']:>8.1f} {100 * r['tflops_fraction']:>6.1f} "
            f"{r['floor_ms']:>9.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmq.bench.gpu", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--quiet", action="store_true")
    try:
        return run_gpu(parser.parse_args(argv))
    except NMQError as exc:
        print(f"nmq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
