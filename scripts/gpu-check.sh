#!/usr/bin/env bash
# The GPU check, one command for a machine with an NVIDIA GPU and no network (its image has PyTorch, Triton,
# pytest and hypothesis; nmq's own Python dependencies beside those are imported only where used): run the
# CUDA tests, the GPU kernel benchmark and a short GPU decode, from the source tree (the C++ CPU extension is
# not needed there and not built). Ends within about 8 minutes; results go to $OUT (default
# benchmarks/results/gpu/): env.txt, tests.log, tests.xml, gpu-kernels.json, gpu-e2e.json and their .err logs
# (7 files). Measured on an H200 (Triton 3.6, a fresh machine): the tests took over 200 s on 8 workers, the
# kernel benchmark about 60 s a shape once Triton's cache was warm; the limits below keep the whole within 8 min.
#
#   bash scripts/gpu-check.sh                     # on the GPU machine, from the repository root
#   GPU_E2E_LAYERS=32 bash scripts/gpu-check.sh   # the whole LLaMA-7B in the decode (default 8 layers)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
status=0

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    || echo "nvidia-smi: not available"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu-check: no CUDA device is visible to PyTorch: this script is for a machine with an NVIDIA GPU"; exit 2; }

# The CUDA tests: the Triton and cuSPARSELt backends against the reference on the GPU (Triton's interpreter
# runs them only where there is no GPU). The whole CPU suite is CI's job.
# Compiling a kernel per pattern/width/dtype is most of their time: spread over the cores where xdist is there;
# a per-test limit (pytest-timeout) lets one slow test fail alone with the rest reported.
parallel=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
per_test=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout 90")
timeout 180 "$PY" -m pytest -q -p no:cacheprovider $parallel $per_test --durations 12 --junitxml="$OUT/tests.xml" \
  tests/backends/test_triton.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tee "$OUT/tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# Each benchmark rewrites its JSON after every batch or configuration (--out), so a limit reached keeps the rows.
bench() {  # name, seconds, table module, command...: records to $OUT/name.json, progress to $OUT/name.err
  local name=$1 limit=$2 table=$3; shift 3
  timeout "$limit" "$PY" -m nmq "$@" --out "$OUT/$name.json" > /dev/null 2> "$OUT/$name.err"
  local rc=$?
  grep -v "Warning\|return cls(" "$OUT/$name.err" | tail -6
  [ "$rc" -eq 0 ] || { echo "gpu-check: $name exited $rc"; status=1; }
  [ -s "$OUT/$name.json" ] && "$PY" -c "import json, sys; from $table import format_table; \
print(format_table(json.load(open(sys.argv[1]))))" "$OUT/$name.json"
}

# The GPU benchmark: Triton and cuSPARSELt against cuBLAS, side by side, from CUDA graphs and eagerly
# (DESIGN.md section 6).
bench gpu-kernels 170 nmq.bench.gpu bench kernels --device cuda --shapes all --batch "${GPU_BATCHES:-1,16,128}" \
  --runs 10 --kernels "${GPU_KERNELS:-cublas-fp16,nmq-dense-int4,cusparselt-2:4-fp16,nmq-2:4-int4}"

# A short decode of the LLaMA-7B shape: fp16 PyTorch, nmq dense INT4 and 2:4 INT4 (Triton), 2:4 on cuSPARSELt.
bench gpu-e2e 120 nmq.bench.gpu_decode bench e2e --device cuda --model llama-7b --layers "${GPU_E2E_LAYERS:-8}" \
  --prompt-tokens 128 --new-tokens 32 --rounds 3
exit "$status"
