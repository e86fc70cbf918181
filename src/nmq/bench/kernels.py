"""``nmq bench kernels``: nmq's CPU kernels side by side with dense and INT4 baselines.

One process, the same activations for every kernel, weights rotated over
``--layers`` copies of every matrix so the working set does not sit in the
last-level cache (DESIGN.md section 6). Every figure is the median over
``--runs`` passes (after ``--warmup`` passes) of the time to run all shapes of
all layers once, right after an untimed pass of the same row (steady state,
as in decoding); kernels are interleaved pass by pass so that a noisy
neighbour slows all of them alike.

Kernels: ``nmq-2:4-int4``, ``nmq-4:8-int4``, ``nmq-1:4-int4``,
``nmq-dense-int4`` (both numeric paths: ``w4a16`` takes bf16 activations,
like ``torch-bf16`` and ``torch-int4pack``, and accumulates in fp32; ``w4a8``
quantizes them to int8 per group of 128), ``torch-fp32`` (PyTorch's own
``linear``: MKL), ``onednn-fp32`` (the same fp32 GEMM through oneDNN, what
nmq's GEMM path and ``nmq eval`` of dense layers use: :mod:`nmq.backends.cpu.gemm`), ``torch-bf16``,
``torch-int4pack`` (``torch.ops.aten._weight_int4pack_mm_for_cpu``, group 128)
and ``ort-matmulnbits`` (ONNX Runtime ``MatMulNBits``, 4 bits, block 128,
accuracy level 4: int8 activations, i.e. the ``w4a8`` path), when the optional
``onnxruntime`` package is installed.

Each record (``--json``)::

    {"kernel", "path", "batch", "shapes", "layers", "median_ms", "bytes", "floor_ms"}

``bytes`` are the weight bytes one pass reads (activations and outputs are
left out: they are small at the batch sizes of interest and the same for all
kernels) and ``floor_ms`` is ``bytes`` over the measured read bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from ..backends.base import NUMERIC_PATHS
from ..backends.cpu import gemm
from ..progress import say
from ..shapes import linear_shapes
from .common import (
    BenchError,
    at_least,
    check_runs,
    cpu_threads,
    parse_ints,
    parse_names,
    select_shapes,
)
from .gpu import run_gpu

NMQ_KERNELS = {"nmq-2:4-int4": "2:4", "nmq-4:8-int4": "4:8", "nmq-1:4-int4": "1:4", "nmq-dense-int4": "dense"}
BASELINES = ("torch-fp32", "onednn-fp32", "torch-bf16", "torch-int4pack", "ort-matmulnbits")
ALL_KERNELS = tuple(NMQ_KERNELS) + BASELINES
GROUP = 128

EXAMPLES = """
    examples:
      nmq bench kernels --shapes llama-7b --layers 3 --batch 1,128 --json
      nmq bench kernels --shape 4096x4096 --batch 1 --kernels nmq-2:4-int4,ort-matmulnbits
"""


@dataclass
class Row:
    kernel: str
    path: str
    batch: int
    nbytes: int
    fn: Callable[[], None]
    times: list[float] = field(default_factory=list)


def add_parser(subparsers: argparse._SubParsersAction, common_parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``kernels`` to the ``nmq bench`` subcommands."""
    text = "Time nmq's CPU kernels against PyTorch and ONNX Runtime on the same inputs (medians, ratios, bandwidth floor)."
    p = subparsers.add_parser(
        "kernels", parents=[common_parent], help=text, description=text,
        epilog=textwrap.dedent(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: nmq's C++ kernels vs PyTorch and ONNX Runtime; cuda: Triton and cuSPARSELt vs cuBLAS (default cpu)")
    p.add_argument("--shapes", default=None, help="a named set of matrices: llama-7b (the seven of a decoder layer; "
                   "the default on cpu), square (4096x4096), all (the default on cuda)")
    p.add_argument("--shape", metavar="OUTxIN", help="one matrix instead of --shapes, e.g. 4096x4096")
    p.add_argument("--layers", type=int, default=3, help="copies of every matrix, rotated to defeat caches (default 3)")
    p.add_argument("--batch", default=None, help="comma-separated token counts (default 1,16,128 on cpu, 1,16,64,128 on cuda)")
    p.add_argument("--threads", type=int, help="threads for every kernel (default: all CPUs this process may use)")
    p.add_argument("--kernels", help=f"comma-separated subset of: {', '.join(ALL_KERNELS)} (default all)")
    p.add_argument("--paths", default="w4a16,w4a8", help="nmq numeric paths (default w4a16,w4a8)")
    p.add_argument("--runs", type=int, default=10, help="timed passes per row, at least 10 (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    p.add_argument("--bandwidth", type=float, metavar="GB/S", help="read bandwidth for the floor (default: measured)")
    p.add_argument("--json", action="store_true", help="print the records as a JSON list")
    p.add_argument("--out", metavar="FILE", help="cuda only: also write the records to FILE as JSON, rewritten after "
                   "every batch (a run cut short keeps what it measured)")
    p.set_defaults(func=run_kernels)
    return p


def run_kernels(args: argparse.Namespace) -> int:
    """Entry point of ``nmq bench kernels``; returns the exit status."""
    if args.device == "cuda":
        return run_gpu(args)
    if args.out:
        raise BenchError("--out is for --device cuda; on cpu use --json and redirect it")
    shapes = select_shapes(args.shape, args.shapes or "llama-7b", {"llama-7b": linear_shapes("llama-7b")})
    batches = parse_ints(args.batch or "1,16,128", "--batch", 4096)
    kernels = parse_names(args.kernels, "--kernels", ALL_KERNELS) if args.kernels else list(ALL_KERNELS)
    paths = parse_names(args.paths, "--paths", NUMERIC_PATHS)
    at_least(args.layers, "--layers", 1)
    check_runs(args.runs)
    threads = cpu_threads(args.threads)
    note = partial(say, enabled=not args.quiet)

    torch.set_num_threads(threads)
    from ..backends.cpu import matmul as cpu_backend

    reason = cpu_backend.CpuBackend().unavailable_reason()
    if reason and any(k in NMQ_KERNELS for k in kernels):
        raise BenchError(f"the nmq cpu backend is not available: {reason}")
    if not reason:
        cpu_backend.set_threads(threads)
    if "ort-matmulnbits" in kernels:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            note("onnxruntime is not installed (pip install onnxruntime): skipping ort-matmulnbits")
            kernels = [k for k in kernels if k != "ort-matmulnbits"]

    gen = torch.Generator().manual_seed(0)
    note(f"building weights: {len(shapes)} shapes x {args.layers} layers, kernels {', '.join(kernels)}")
    bench = _Weights(shapes, args.layers, gen, threads, note)
    rows: list[Row] = []
    inputs = {b: {k: torch.randn(b, k, generator=gen) for k in {s[2] for s in shapes}} for b in batches}
    for kernel in kernels:
        try:
            rows += bench.rows(kernel, batches, paths, inputs)
        except BenchError as exc:
            if kernel in NMQ_KERNELS:
                raise
            note(f"skipping {kernel}: {exc}")
    bandwidth = args.bandwidth or measure_bandwidth()
    note(f"read bandwidth {bandwidth:.1f} GB/s; timing {len(rows)} rows, {args.runs} runs each")
    for batch in batches:
        batch_rows = [r for r in rows if r.batch == batch]
        for _ in range(args.warmup):
            for r in batch_rows:
                r.fn()
        for _ in range(args.runs):
            for r in batch_rows:
                # Thread pools (ONNX Runtime's, OpenMP's, nmq's) spin for a while
                # after their work (ONNX Runtime's for some 20-100 ms here): let
                # them go idle so no row pays for the previous row's spinning.
                # Then one untimed pass wakes the row's
                # threads and cores (idle cores of a VM restart slowly, which
                # would add milliseconds to a pass), and the next pass is timed:
                # steady state, as when a model's layers run back to back.
                # Both passes stream all layers, far more than the caches hold.
                time.sleep(0.1)
                r.fn()
                t0 = time.perf_counter()
                r.fn()
                r.times.append(time.perf_counter() - t0)
    records = [
        {
            "kernel": r.kernel, "path": r.path, "batch": r.batch,
            "shapes": [f"{o}x{i}" for _, o, i in shapes], "layers": args.layers,
            "median_ms": round(statistics.median(r.times) * 1e3, 4),
            "bytes": r.nbytes, "floor_ms": round(r.nbytes / (bandwidth * 1e9) * 1e3, 4),
        }
        for r in rows
    ]
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print(format_table(records, bandwidth, threads))
    return 0


def format_table(records: list[dict], bandwidth: float, threads: int) -> str:
    """Times, floors and the ratios the issue asks about, one line per record."""
    def find(kernel: str, batch: int) -> float | None:
        for r in records:
            if r["kernel"] == kernel and r["batch"] == batch:
                return r["median_ms"]
        return None

    lines = [f"read bandwidth {bandwidth:.1f} GB/s, {threads} threads; medians over the whole set of shapes x layers",
             (f"{'kernel':<16} {'path':<6} {'batch':>5} {'median ms':>10} {'MB':>8} {'floor ms':>9} "
              f"{'x floor':>8} {'/ ort':>7} {'/ fp32':>7} {'/ dnn':>7}")]
    for r in records:
        ratios = []
        for peer, digits in (("ort-matmulnbits", 2), ("torch-fp32", 3), ("onednn-fp32", 3)):
            t = find(peer, r["batch"])
            ratios.append(f"{r['median_ms'] / t:.{digits}f}" if t else "-")
        lines.append(
            f"{r['kernel']:<16} {r['path']:<6} {r['batch']:>5} {r['median_ms']:>10.3f} {r['bytes'] / 1e6:>8.1f} "
            f"{r['floor_ms']:>9.3f} {r['median_ms'] / r['floor_ms']:>8.2f} {ratios[0]:>7} {ratios[1]:>7} {ratios[2]:>7}"
        )
    return "\n".join(lines)


def measure_bandwidth(nbytes: int = 1 << 30, runs: int = 10) -> float:
    """Read bandwidth in GB/s: median time of summing a buffer far larger than any cache."""
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


class _Weights:
    """One random matrix per distinct shape; every layer holds its own copy of
    each kernel's form of it (distinct memory, so rotating layers defeats caches)."""

    def __init__(self, shapes, layers, gen, threads, note):
        self.shapes, self.layers, self.threads, self.note = shapes, layers, threads, note
        self.dense = {}
        for _, o, i in shapes:
            if (o, i) not in self.dense:
                self.dense[(o, i)] = torch.randn(o, i, generator=gen) * 0.02

    def _each(self, make: Callable[[int, int], object]) -> list[tuple[int, object]]:
        """(in_features, object) for every shape of every layer; ``make`` runs once per shape."""
        cache: dict[tuple[int, int], object] = {}
        out = []
        for _ in range(self.layers):
            for _, o, i in self.shapes:
                if (o, i) not in cache:
                    cache[(o, i)] = make(o, i)
                out.append((i, _copy(cache[(o, i)])))
        return out

    def rows(self, kernel: str, batches, paths, inputs) -> list[Row]:
        self.note(f"  preparing {kernel}")
        if kernel in NMQ_KERNELS:
            return self._nmq(kernel, batches, paths, inputs)
        if kernel in ("torch-fp32", "onednn-fp32", "torch-bf16"):
            dt = torch.bfloat16 if kernel == "torch-bf16" else torch.float32
            op = gemm.linear if kernel == "onednn-fp32" else torch.nn.functional.linear
            mats = self._each(lambda o, i: self.dense[(o, i)].to(dt))
            nbytes = sum(w.numel() * w.element_size() for _, w in mats)
            out = []
            for b in batches:
                xs = {k: x.to(dt) for k, x in inputs[b].items()}
                out.append(Row(kernel, "w4a16", b, nbytes, _loop([(xs[i], w) for i, w in mats], op)))
            return out
        if kernel == "torch-int4pack":
            return self._int4pack(batches, inputs)
        return self._ort(batches, inputs)

    def _nmq(self, kernel, batches, paths, inputs) -> list[Row]:
        from ..backends.cpu.matmul import CpuBackend, CpuPacked
        from ..compress.weight import compress_weight

        be = CpuBackend()
        pattern = NMQ_KERNELS[kernel]
        mats = self._each(lambda o, i: be.prepack(compress_weight(self.dense[(o, i)], pattern=pattern, bits=4,
                                                                  group_size=GROUP)))
        assert all(isinstance(p, CpuPacked) for _, p in mats)
        nbytes = sum(p.nbytes for _, p in mats)
        rows = []
        for b in batches:
            for path in paths:
                dt = torch.bfloat16 if path == "w4a16" else torch.float32
                xs = {k: x.to(dt) for k, x in inputs[b].items()}
                pairs = [(xs[i], p) for i, p in mats]

                def fn(pairs=pairs, path=path):
                    for x, p in pairs:
                        be.matmul(x, p, path)

                rows.append(Row(kernel, path, b, nbytes, fn))
        return rows

    def _int4(self, o: int, i: int):
        """Symmetric INT4 codes and fp32 scales per group of 128 of the shape's matrix."""
        w = self.dense[(o, i)].reshape(o, i // GROUP, GROUP)
        scale = w.abs().amax(-1, keepdim=True) / 7
        codes = (torch.round(w / scale).clamp(-8, 7) + 8).to(torch.int32).reshape(o, i)
        return codes, scale.reshape(o, i // GROUP)

    def _int4pack(self, batches, inputs) -> list[Row]:
        for _, _, i in self.shapes:
            if i % GROUP:
                raise BenchError(f"torch-int4pack needs in_features divisible by {GROUP}; got {i}")

        def make(o, i):
            codes, scale = self._int4(o, i)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            sz = torch.stack([scale.T.contiguous(), torch.zeros(i // GROUP, o)], -1).to(torch.bfloat16)
            return packed, sz

        mats = self._each(make)
        nbytes = sum(p.numel() * p.element_size() + s.numel() * s.element_size() for _, (p, s) in mats)
        op = torch.ops.aten._weight_int4pack_mm_for_cpu
        rows = []
        for b in batches:
            xs = {k: x.to(torch.bfloat16) for k, x in inputs[b].items()}
            items = [(xs[i], p, s) for i, (p, s) in mats]

            def fn(items=items):
                for x, p, s in items:
                    op(x, p, GROUP, s)

            rows.append(Row("torch-int4pack", "w4a16", b, nbytes, fn))
        return rows

    def _ort(self, batches, inputs) -> list[Row]:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper

        for _, _, i in self.shapes:
            if i % GROUP:
                raise BenchError(f"ort-matmulnbits needs in_features divisible by {GROUP}; got {i}")
        nodes, inits, outputs = [], [], []
        ins = sorted({i for _, _, i in self.shapes})
        nbytes = 0
        cache = {}
        n = 0
        for _ in range(self.layers):
            for _, o, i in self.shapes:
                if (o, i) not in cache:
                    codes, scale = self._int4(o, i)
                    c = codes.to(torch.uint8).reshape(o, i // 2, 2)
                    blob = (c[..., 0] | (c[..., 1] << 4)).reshape(o, i // GROUP, GROUP // 2)
                    cache[(o, i)] = (blob.numpy(), scale.reshape(-1).numpy().astype(np.float32))
                blob, scale = cache[(o, i)]
                inits.append(helper.make_tensor(f"B{n}", TensorProto.UINT8, blob.shape, blob.tobytes(), raw=True))
                inits.append(helper.make_tensor(f"S{n}", TensorProto.FLOAT, scale.shape, scale.tobytes(), raw=True))
                nodes.append(helper.make_node(
                    "MatMulNBits", [f"x{i}", f"B{n}", f"S{n}"], [f"y{n}"], domain="com.microsoft",
                    K=i, N=o, bits=4, block_size=GROUP, accuracy_level=4))
                outputs.append(helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, ["T", o]))
                nbytes += blob.nbytes + scale.nbytes
                n += 1
        graph = helper.make_graph(
            nodes, "nmq_bench", [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["T", i]) for i in ins],
            outputs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        rows = []
        for b in batches:
            feeds = {f"x{i}": inputs[b][i].numpy() for i in ins}

            def fn(feeds=feeds):
                sess.run(None, feeds)

            rows.append(Row("ort-matmulnbits", "w4a8", b, nbytes, fn))
        return rows


def _copy(obj):
    from ..backends.cpu.matmul import CpuPacked

    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_copy(o) for o in obj)
    if isinstance(obj, CpuPacked):
        return obj.copy()
    raise TypeError(type(obj))


def _loop(items, op):
    def fn():
        for x, w in items:
            op(x, w)
    return fn

