#!/usr/bin/env bash
# The whole GPU check in one command, for a GPU machine lent for a few
# minutes (torch with CUDA and Triton; no mm* package, no pip needed):
#   1. the environment (GPU, driver, torch, CUDA, Triton) -> OUT/env.txt
#   2. the CUDA tests of the Triton kernels, if pytest is there
#      -> OUT/pytest_cuda.txt
#   3. tools/analysis_tools/benchmark_gpu.py (correctness on the GPU, then
#      the timings) -> OUT/benchmark_gpu.md (rewritten after each part, so
#      a run cut short keeps the parts it finished) and OUT/benchmark_gpu.log
# within BUDGET seconds in all (default 520).
#
# Usage, from the repository root:
#   bash tools/analysis_tools/gpu_check.sh OUT [BUDGET] [benchmark_gpu args]
# e.g. bash tools/analysis_tools/gpu_check.sh "$OUT" 520 --parts op stages
set -u
OUT=${1:?usage: gpu_check.sh OUT [BUDGET] [benchmark_gpu args]}
BUDGET=${2:-520}
shift $(( $# < 2 ? $# : 2 ))
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
        2>&1 || echo 'nvidia-smi: not available'
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if "$PY" -c 'import pytest' 2>/dev/null; then
    # the CUDA tests only (the interpreter ones run in CI); --noconftest:
    # the suite's data fixtures need mm* packages a GPU machine lacks
    (cd "$ROOT" && PYTHONPATH="$ROOT" timeout $(( $(left) / 4 )) "$PY" -m \
        pytest -q --noconftest -p no:cacheprovider -k cuda \
        tests/test_ops/test_triton.py) > "$OUT/pytest_cuda.txt" 2>&1
    echo "pytest exit status: $?" >> "$OUT/pytest_cuda.txt"
    tail -n 3 "$OUT/pytest_cuda.txt"
else
    echo 'pytest is not installed: CUDA tests not run' | tee "$OUT/pytest_cuda.txt"
fi

echo "benchmark_gpu: $(left) s left"
timeout "$(left)" "$PY" "$ROOT/tools/analysis_tools/benchmark_gpu.py" \
    --out "$OUT/benchmark_gpu.md" "$@" 2>&1 | tee "$OUT/benchmark_gpu.log"
status=${PIPESTATUS[0]}
echo "benchmark_gpu exit status: $status (124: out of time)" \
    | tee -a "$OUT/benchmark_gpu.log"
exit "$status"
