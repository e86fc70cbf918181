#!/usr/bin/env bash
# The GPU check, one command for a machine with an NVIDIA GPU and no network (its image has PyTorch, Triton,
# nanobind, scikit-build-core, pytest and hypothesis): build nmq against the PyTorch already there, run the
# CUDA tests, then the GPU kernel benchmark. Ends within about 8 minutes; results go to $OUT (default
# gpu-check-out/): tests.log, gpu-kernels.json, env.txt.
#
#   bash scripts/gpu-check.sh            # on the GPU machine, from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# No network there: build without isolation, with what the image has; dependencies are the image's.
timeout 240 "$PY" -m pip install --quiet --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -5 \
  || { echo "gpu-check: building nmq failed"; exit 1; }

# The CUDA tests: the Triton and cuSPARSELt backends against the reference on the GPU (Triton's interpreter
# runs them only where there is no GPU). The whole CPU suite is CI's job.
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/backends/test_triton.py 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The GPU benchmark: Triton and cuSPARSELt against cuBLAS, side by side (DESIGN.md section 6).
timeout 240 "$PY" -m nmq bench kernels --device cuda --json > "$OUT/gpu-kernels.json" 2> "$OUT/gpu-kernels.err"
rc=$?
tail -5 "$OUT/gpu-kernels.err"
[ "$rc" -eq 0 ] || { echo "gpu-check: the GPU benchmark exited $rc"; status=1; }
exit "$status"
