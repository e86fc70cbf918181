"""The GPU backends against the reference.

Without a CUDA device the Triton kernels run through Triton's interpreter
(``TRITON_INTERPRET=1``, set here before Triton is imported) on CPU tensors:
the same kernel source, executed with numpy. Code generation for real GPUs is
checked separately by compiling the kernels for sm_80 and sm_90 with Triton's
offline compiler (no GPU needed). The ``cusparselt`` matmul needs a GPU and
skips without one; its padding and checks run on the CPU.

Tolerances: the contract's relative Frobenius error 1e-3 holds for fp16 and
bf16 activations too, because the reference is fed the same fp16/bf16
activations and the kernels hand tensor cores exact ``code - zero`` integers
(the group scale multiplies fp32 tile products). Only when a quantization
group is shorter than the K tile does every weight get scaled and rounded to
the activation dtype first: there bf16 (8-bit mantissa) is held to 1e-2 and
fp16 to 2e-3.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import nmq
from nmq.backends import get_backend
from nmq.errors import BackendError

if not torch.cuda.is_available():
    # Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when its module is imported.
    if any(n.startswith("nmq.kernels.triton.") for n in sys.modules) and "TRITON_INTERPRET" not in os.environ:
        pytest.skip("the Triton kernels were imported for a GPU before this module could set TRITON_INTERPRET=1 "
                    "(collect tests/ before src/, or set TRITON_INTERPRET=1)", allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install triton)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU-only path")

CONTRACT = 1e-3
# Where the kernels run: the GPU when there is one, else CPU tensors through the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert ref.norm() > 0, "the reference output is all zeros: the test would prove nothing"
    return ((y.float().cpu() - ref).norm() / ref.norm()).item()


def make(rng, out, k, pattern, group, symmetric, bits=4, metadata="rank"):
    w = torch.randn(out, k, generator=rng)
    t = nmq.compress_weight(w, pattern=pattern, bits=bits, group_size=group, symmetric=symmetric, metadata=metadata)
    assert t.to_dense().abs().sum() > 0
    return t


def run_kernel(t, x, config=None, vector=None):
    from nmq.kernels.triton.launch import pack_weight, triton_matmul

    return triton_matmul(x.to(DEVICE), pack_weight(t, DEVICE), config=config, vector=vector)


def reference(x, t):
    return get_backend("reference").matmul(x, t)


# -- both kernels, every listed pattern, group, quantizer and dtype --------------

@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "dense", "8:8"])
def test_kernel_matches_reference(rng, pattern, group, symmetric, dtype):
    # K 320 is padded to 384 for group 128; out 24 is not a multiple of the output tile.
    t = make(rng, 24, 320, pattern, group, symmetric)
    x = torch.randn(3, 320, generator=rng).to(dtype)
    y = run_kernel(t, x)
    assert y.dtype == torch.float32 and y.shape == (3, 24)
    assert rel_err(y, reference(x, t)) < CONTRACT


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "8:16"])
def test_nm_kernel_gather_path(rng, pattern, dtype):
    # Power-of-two patterns normally rebuild tiles with reshapes; the gather path must agree too.
    t = make(rng, 24, 320, pattern, 64, symmetric=False)
    x = torch.randn(3, 320, generator=rng).to(dtype)
    ref = reference(x, t)
    gathered = run_kernel(t, x, vector=False)
    assert rel_err(gathered, ref) < CONTRACT
    assert rel_err(run_kernel(t, x, vector=True), ref) < CONTRACT


@needs_triton
@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("pattern,out,k,group", [
    ("2:4", 24, 320, 128),   # K padded to a whole group
    ("4:8", 40, 200, 64),    # K not a multiple of the K tile, padded to 256
    ("dense", 5, 72, 64),    # a single partial output tile
    ("1:4", 33, 136, -1),    # one group per row: the scale is applied after the K loop
])
def test_odd_shapes(rng, pattern, out, k, group, tokens):
    t = make(rng, out, k, pattern, group, symmetric=False)
    x = torch.randn(tokens, k, generator=rng).half()
    assert rel_err(run_kernel(t, x), reference(x, t)) < CONTRACT


@needs_triton
@pytest.mark.parametrize("pattern", ["2:3", "3:6", "7:8", "1:16", "5:16", "8:16"])
def test_irregular_patterns(rng, pattern):
    # M that is not a power of two gives 3-bit indices that straddle bytes; M = 16 gives 4-bit ones.
    m = int(pattern.split(":")[1])
    group = math.lcm(m, 32)  # a group the K tile divides, so the integer weights stay exact
    t = make(rng, 24, 2 * group + m, pattern, group, symmetric=False)
    x = torch.randn(3, t.in_features, generator=rng).half()
    assert rel_err(run_kernel(t, x), reference(x, t)) < CONTRACT


@needs_triton
@pytest.mark.parametrize("bits", [8, 3, 2])
@pytest.mark.parametrize("pattern", ["2:4", "dense"])
def test_other_code_widths(rng, pattern, bits):
    t = make(rng, 24, 256, pattern, 64, symmetric=False, bits=bits)
    x = torch.randn(5, 256, generator=rng).half()
    assert rel_err(run_kernel(t, x), reference(x, t)) < CONTRACT


@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("pattern", ["2:4", "dense"])
def test_group_shorter_than_tile(rng, pattern, dtype, tol):
    # Group 24 < BLOCK_K 32: weights are scaled before the dot, rounded to the activation dtype.
    t = make(rng, 24, 192, pattern, 24, symmetric=False)
    x = torch.randn(3, 192, generator=rng).to(dtype)
    err = rel_err(run_kernel(t, x), reference(x, t))
    assert err < tol
    assert err > 0  # the rounding is real; exactness here would mean the scale path was not taken


@needs_triton
@pytest.mark.parametrize("pattern", ["2:4", "dense"])
def test_fp32_activations(rng, pattern):
    t = make(rng, 24, 256, pattern, 128, symmetric=True)
    x = torch.randn(4, 256, generator=rng)
    assert rel_err(run_kernel(t, x), reference(x, t)) < 1e-5


@needs_triton
@pytest.mark.parametrize("config", [
    {"BLOCK_T": 16, "BLOCK_O": 32, "BLOCK_K": 64, "SPLIT_K": 2},
    {"BLOCK_T": 16, "BLOCK_O": 16, "BLOCK_K": 32, "SPLIT_K": 4},
    {"BLOCK_T": 64, "BLOCK_O": 128, "BLOCK_K": 64, "SPLIT_K": 1},
    {"BLOCK_T": 16, "BLOCK_O": 64, "BLOCK_K": 128, "SPLIT_K": 3},
], ids=["split2", "split4", "big-tile", "split3-k128"])
@pytest.mark.parametrize("pattern", ["2:4", "dense"])
def test_split_k_and_gpu_tiles(rng, pattern, config):
    # split-K adds partial tiles atomically; SPLIT_K 3 leaves some programs without a K tile.
    t = make(rng, 40, 448, pattern, 64, symmetric=False)
    x = torch.randn(17, 448, generator=rng).half()
    assert rel_err(run_kernel(t, x, config), reference(x, t)) < CONTRACT


@needs_triton
def test_every_autotune_config_is_correct(rng):
    from nmq.kernels.triton.launch import LARGE_CONFIGS, SMALL_CONFIGS

    t = make(rng, 24, 256, "2:4", 128, symmetric=False)
    x = torch.randn(2, 256, generator=rng).half()
    ref = reference(x, t)
    for c in SMALL_CONFIGS + LARGE_CONFIGS:
        assert rel_err(run_kernel(t, x, c.kwargs), ref) < CONTRACT, c


@needs_triton
def test_prune_keeps_tiles_inside_a_group():
    from nmq.kernels.triton.launch import (
        LARGE_CONFIGS,
        SMALL_CONFIGS,
        prune_configs,
        scale_mode,
    )

    configs = SMALL_CONFIGS + LARGE_CONFIGS
    kept = prune_configs(configs, {}, GROUP=64, NGROUPS=4)
    assert kept and all(c.kwargs["BLOCK_K"] <= 64 for c in kept) and len(kept) < len(configs)
    assert len(prune_configs(configs, {}, GROUP=320, NGROUPS=1)) == len(configs)
    assert prune_configs(configs, {}, GROUP=24, NGROUPS=8) == configs  # nothing fits: keep all
    assert (scale_mode(128, 4, 64), scale_mode(384, 1, 64), scale_mode(24, 8, 32)) == (0, 1, 2)


# -- the backend -----------------------------------------------------------------

@needs_triton
def test_backend_through_registry(rng):
    backend = get_backend("triton")
    assert backend.name == "triton" and backend.device == "cuda"
    t = make(rng, 24, 320, "4:8", 64, symmetric=True)
    x = torch.randn(2, 3, 320, generator=rng).half()
    y = nmq.matmul(x, t, backend="triton")
    assert y.shape == (2, 3, 24) and y.dtype == torch.float32
    assert rel_err(y.reshape(6, 24), reference(x.reshape(6, 320), t)) < CONTRACT


@needs_triton
def test_nmq_linear_on_triton(rng):
    from nmq.runtime.linear import NMQLinear

    linear = torch.nn.Linear(320, 40)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 320, generator=rng))
        linear.bias.copy_(torch.randn(40, generator=rng))
    layer = NMQLinear.from_linear(linear, backend="triton", pattern="2:4", group_size=64)
    x = torch.randn(2, 5, 320, generator=rng).half()
    y = layer(x)
    assert y.dtype == torch.float16 and y.shape == (2, 5, 40)
    layer.set_backend("reference")
    assert rel_err(y.float(), layer(x).float()) < 2e-3  # both rounded to fp16 at the end


@needs_triton
def test_backend_reads_compressed_bytes_only(rng):
    t = make(rng, 24, 320, "2:4", 64, symmetric=False, metadata="rank")
    packed = get_backend("triton").prepack(t)
    index = t.with_metadata("index")
    assert torch.equal(packed.values.cpu(), t.values) and torch.equal(packed.meta.cpu(), index.meta)
    assert torch.equal(packed.zeros.cpu(), t.zeros) and torch.equal(packed.scales.cpu(), t.scales)
    assert packed.nbytes == index.nbytes < t.out_features * t.in_features  # under one byte per weight


@needs_triton
def test_rank_and_index_metadata_agree(rng):
    t = make(rng, 24, 256, "2:4", 128, symmetric=True, metadata="rank")
    x = torch.randn(3, 256, generator=rng).half()
    backend = get_backend("triton")
    a = backend.matmul(x, backend.prepack(t))
    b = backend.matmul(x, backend.prepack(t.with_metadata("index")))
    assert torch.equal(a, b)


@needs_triton
def test_backend_errors(rng):
    backend = get_backend("triton")
    t = make(rng, 24, 128, "2:4", 64, symmetric=True)
    packed = backend.prepack(t)
    with pytest.raises(BackendError, match="w4a16 path only"):
        backend.matmul(torch.randn(2, 128), packed, "w4a8")
    with pytest.raises(BackendError, match="expects 128"):
        backend.matmul(torch.randn(2, 64), packed)
    with pytest.raises(BackendError, match="dtype"):
        backend.matmul(torch.ones(2, 128, dtype=torch.float64), packed)


def test_triton_unavailable_reason_names_the_cause(monkeypatch):
    from nmq.backends.triton import TritonBackend

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "not installed" in TritonBackend().unavailable_reason()


# -- code generation for real GPUs ---------------------------------------------------

COMPILE_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from nmq.kernels.triton.nm_int4 import nm_int4_kernel
    from nmq.kernels.triton.dense_int4 import dense_int4_kernel

    PTRS = {"x_ptr": "*fp16", "v_ptr": "*u8", "meta_ptr": "*u8", "s_ptr": "*fp16", "z_ptr": "*u8", "y_ptr": "*fp32"}
    cases = [
        (nm_int4_kernel, dict(N=2, M=4, IDX_BITS=2, VECTOR=True),
         dict(SYMMETRIC=True, SCALE_MODE=0, SPLIT_K=4, BLOCK_T=16), 80),
        (nm_int4_kernel, dict(N=4, M=8, IDX_BITS=3, VECTOR=True),
         dict(SYMMETRIC=False, SCALE_MODE=0, SPLIT_K=1, BLOCK_T=64), 90),
        (nm_int4_kernel, dict(N=3, M=6, IDX_BITS=3, VECTOR=False),
         dict(SYMMETRIC=False, SCALE_MODE=2, SPLIT_K=1, BLOCK_T=64), 90),
        (dense_int4_kernel, {}, dict(SYMMETRIC=False, SCALE_MODE=1, SPLIT_K=2, BLOCK_T=16), 80),
        (dense_int4_kernel, {}, dict(SYMMETRIC=True, SCALE_MODE=0, SPLIT_K=1, BLOCK_T=64), 90),
        (dense_int4_kernel, dict(BITS=8), dict(SYMMETRIC=False, SCALE_MODE=0, SPLIT_K=1, BLOCK_T=16, IEEE=True), 80),
    ]
    for kernel, pattern, variant, arch in cases:
        names = kernel.arg_names
        const = dict(BITS=4, GROUP=64, UPCAST=False, IEEE=False, BLOCK_O=64, BLOCK_K=64)
        const.update(pattern, **variant)
        ptrs = dict(PTRS, x_ptr="*fp32" if const["IEEE"] else "*fp16")
        sig = {n: "constexpr" if n in const else ptrs.get(n, "i32") for n in names}
        k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const), target=GPUTarget("cuda", arch, 32))
        ptx = k.asm["ptx"]
        if const["IEEE"]:
            mma = True  # full-precision fp32 products run on FMA units, not tensor cores
        else:
            mma = "wgmma" in ptx if arch == 90 and variant["BLOCK_T"] >= 64 else "mma.sync" in ptx
        print(kernel.__name__, arch, "cubin" in k.asm and mma)
""")


@needs_triton
def test_kernels_compile_to_tensor_core_code_for_ampere_and_hopper():
    # The interpreter skips code generation, where Triton's type rules are stricter: compile for real.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    if run.returncode != 0 and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("Triton's bundled ptxas is missing: cannot compile for a GPU here")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.endswith("True") for line in lines), run.stdout


@needs_triton
@needs_cuda
@pytest.mark.parametrize("tokens", [1, 16, 17, 128])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "dense"])
def test_autotuned_kernels_on_gpu(rng, pattern, tokens):
    t = make(rng, 256, 1024, pattern, 128, symmetric=False)
    backend = get_backend("triton")
    x = torch.randn(tokens, 1024, generator=rng).half().cuda()
    y = backend.matmul(x, backend.prepack(t))
    assert y.is_cuda and rel_err(y, reference(x.cpu(), t)) < CONTRACT


# -- cusparselt ----------------------------------------------------------------------

def test_cusparselt_rejects_other_patterns(rng):
    from nmq.backends.cusparselt import CusparseltBackend, check_weight

    with pytest.raises(BackendError, match="2:4 weights only; this weight is 4:8"):
        check_weight(make(rng, 32, 64, "4:8", 64, symmetric=True))
    with pytest.raises(BackendError, match="2:4 weights only"):
        CusparseltBackend().prepack(make(rng, 32, 64, "dense", 64, symmetric=True))


def test_cusparselt_padded_weight_is_2_4_and_exact(rng):
    from nmq.backends.cusparselt import semi_structured_dense

    t = make(rng, 24, 320, "2:4", 128, symmetric=False)
    dense = semi_structured_dense(t, torch.float16)
    assert dense.shape == (32, 320)
    assert bool(((dense.reshape(32, -1, 4) != 0).sum(-1) <= 2).all())
    assert torch.equal(dense[:24].float(), t.to_dense().half().float())
    assert dense[24:].abs().sum() == 0
    assert semi_structured_dense(make(rng, 8, 100, "2:4", -1, symmetric=True), torch.bfloat16).shape == (32, 128)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cusparselt_unavailable_without_cuda(rng):
    from nmq.backends.cusparselt import CusparseltBackend

    assert "no CUDA device" in CusparseltBackend().unavailable_reason()
    with pytest.raises(BackendError, match="not available here"):
        CusparseltBackend().prepack(make(rng, 32, 64, "2:4", 64, symmetric=True))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out,k,tokens", [(64, 256, 1), (24, 320, 17), (256, 1024, 128)])
def test_cusparselt_matches_reference(rng, out, k, tokens, dtype):
    backend = get_backend("cusparselt")
    t = make(rng, out, k, "2:4", 64, symmetric=False)
    x = torch.randn(tokens, k, generator=rng).to(dtype).cuda()
    y = backend.matmul(x, backend.prepack(t))
    # The weight is rounded once to fp16/bf16 and the product is returned in that dtype.
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert y.is_cuda and rel_err(y, reference(x.cpu(), t)) < tol


# -- the GPU benchmark ---------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit status given without CUDA")
def test_gpu_bench_without_cuda_exits_2_with_one_line(capsys):
    from nmq.bench import gpu

    assert gpu.main(["--shape", "256x256", "--batch", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nmq: error:") and "CUDA" in err and "\n" not in err


def test_gpu_bench_options():
    import argparse

    from nmq.bench import gpu

    p = argparse.ArgumentParser()
    gpu.add_arguments(p)
    args = p.parse_args([])
    assert gpu._shapes(args) == [(4096, 4096), (11008, 4096), (4096, 11008)]
    assert gpu._batches(args.batch) == [1, 16, 64, 128]
    assert gpu._shapes(p.parse_args(["--shapes", "square"])) == [(4096, 4096)]
    assert gpu._shapes(p.parse_args(["--shape", "24x320"])) == [(24, 320)]
    with pytest.raises(gpu.GpuBenchError, match="accepted: square, llama-7b, all"):
        gpu._shapes(p.parse_args(["--shapes", "llama-70b"]))
    with pytest.raises(gpu.GpuBenchError, match="unknown"):
        gpu._kernels("cublas-fp16,marlin")
    assert gpu._copies(32 << 20, 50 << 20, 1) == 7  # 4x a 50 MB L2 over a 32 MB fp16 4096x4096


def test_gpu_bench_times_graphs_and_eager_side_by_side(monkeypatch, tmp_path):
    # The timing logic without a GPU: CUDA events and graph capture replaced by counters.
    import json

    from nmq.bench import gpu

    class Graph:
        def replay(self):
            calls.append("replay")

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(gpu, "capture", lambda case, x: (None, "RuntimeError: no capture") if case.name == "b"
                        else (Graph(), None))
    monkeypatch.setattr(gpu, "_event_ms", lambda fn: (fn(), 2.0 if calls[-1] == "replay" else 6.0)[1])
    cases = [gpu.Case("cublas-fp16", "torch", 1, [lambda x: calls.append("a")] * 2),
             gpu.Case("b", "triton", 1, [lambda x: calls.append("b")] * 3)]
    timed = gpu._time(cases, torch.ones(1), runs=10, warmup=1)
    a, b = timed["cublas-fp16"], timed["b"]
    assert (a["timing"], a["graph_ms"], a["eager_ms"], a["median_ms"]) == ("graph", 1.0, 3.0, 1.0)
    assert (b["timing"], b["graph_ms"], b["eager_ms"], b["median_ms"]) == ("eager", None, 2.0, 2.0)
    assert b["graph_error"] == "RuntimeError: no capture" and calls.count("replay") == 10
    assert gpu._ratio(a, b) == 1.5 and gpu._ratio(a, a) == 1.0  # eager over eager when one was not captured
    records = [{"name": "b", **b}]
    gpu.write_records(tmp_path / "r.json", records)
    assert json.loads((tmp_path / "r.json").read_text()) == records and len(list(tmp_path.iterdir())) == 1


@needs_triton
@pytest.mark.parametrize("pattern,tokens", [("2:4", 3), ("dense", 17)])
def test_gpu_host_path_autotunes_prunes_and_splits(rng, monkeypatch, pattern, tokens):
    # The path a GPU takes (autotune -> prune -> heuristics -> kernel, y zeroed between trials),
    # run through the interpreter with a wall-clock timer in place of CUDA events.
    import time

    from nmq.kernels.triton import launch

    def cpu_bench(fn, quantiles=None):
        start = time.perf_counter()
        fn()
        ms = (time.perf_counter() - start) * 1e3
        return [ms, ms, ms] if quantiles else ms

    small = [c for c in launch.SMALL_CONFIGS if c.kwargs["BLOCK_O"] <= 64][:3]
    large = [c for c in launch.LARGE_CONFIGS if c.kwargs["BLOCK_T"] == 32]
    tuned = {("nm", True): launch.tuned(launch.NM_KERNEL, small, cpu_bench),
             ("dense", True): launch.tuned(launch.DENSE_KERNEL, small, cpu_bench),
             ("nm", False): launch.tuned(launch.NM_KERNEL, large, cpu_bench),
             ("dense", False): launch.tuned(launch.DENSE_KERNEL, large, cpu_bench)}
    monkeypatch.setattr(launch, "INTERPRET", False)
    monkeypatch.setattr(launch, "TUNED", tuned)
    t = make(rng, 40, 320, pattern, 64, symmetric=False)
    x = torch.randn(tokens, 320, generator=rng).half()
    y = launch.triton_matmul(x.to(DEVICE), launch.pack_weight(t, DEVICE))
    assert rel_err(y, reference(x, t)) < CONTRACT
    chosen = tuned[(t.pattern.is_dense and "dense" or "nm", tokens <= launch.SMALL_BATCH)].best_config
    assert chosen.kwargs["BLOCK_K"] <= 64  # K tiles of 128 straddle groups of 64 and were pruned


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks how the GPU check ends on a machine without CUDA")
def test_gpu_check_script_ends_with_one_line_without_a_gpu(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check.sh"
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)})
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("gpu-check: no CUDA device is visible")
    assert (tmp_path / "env.txt").exists() and not (tmp_path / "tests.log").exists()  # stopped before any test


def test_semi_structured_bytes_count_what_the_product_reads():
    from types import SimpleNamespace

    from nmq.backends.cusparselt import SemiStructuredWeight, semi_structured_bytes

    s = SimpleNamespace(packed=torch.zeros(32, 48, dtype=torch.float16), meta=torch.zeros(32, 4, dtype=torch.int16),
                        shape=(32, 64))
    assert semi_structured_bytes(s) == 32 * 48 * 2 + 32 * 4 * 2
    assert semi_structured_bytes(SimpleNamespace(packed=None, shape=(32, 64))) == 32 * 64 + 32 * 64 // 8
    w = SemiStructuredWeight(None, 32, 64, 64, "cutlass", {torch.float16: s, torch.bfloat16: s})
    assert w.nbytes == 2 * semi_structured_bytes(s)
