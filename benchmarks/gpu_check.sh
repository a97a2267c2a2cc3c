#!/usr/bin/env bash
# The GPU path's checks in one go, on a machine with CUDA (docs/guide/gpu.md):
#   1. the CUDA tests (tests/test_device.py): the demo protocol on CUDA, bf16 vs float32, a float32 CUDA run
#      against the CPU run, bit-for-bit repeat and resume on CUDA, pinned transfers, bf16 activations;
#   2. bench_online.py --device cuda: the per-tick overhead at batch 1 (issue 13 item 4) on the GPU;
#   3. bench_step.py --device cuda (part 5): CPU vs GPU steps/s of the simulator loop, same process;
#   4. the README's demo (`colsim run nonstationary --rule lpl`) on CUDA, timed, and its figures.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (PY=python3 by default; colsim installed in it)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT_DIR=${1:-gpu_check}
export PYTHONUNBUFFERED=1
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: gpu_check.sh: CUDA is not available to $PY on this machine; run it on a machine with a GPU" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), os.cpu_count(), 'cpus')"
status=0
echo "== 1. CUDA tests"
$PY -m pytest -q -rs -s -p no:cacheprovider -m "slow or not slow" tests/test_device.py 2>&1 | tee "$OUT_DIR/pytest_device.log" || status=1
echo "== 2. bench_online --device cuda"
$PY benchmarks/bench_online.py --device cuda --steps 400 --warmup 50 --step-ahead off 2>&1 | tee "$OUT_DIR/bench_online_cuda.log" || status=1
echo "== 3. bench_step --device cuda (part 5)"
$PY benchmarks/bench_step.py --device cuda --skip-default --skip-resnet --steps 60 --resnet-steps 6 2>&1 | tee "$OUT_DIR/bench_step_cuda.log" || status=1
echo "== 4. the demo on CUDA"
TIMEFORMAT="demo wall %R s"
time $PY -m colsim.cli run nonstationary --rule lpl --device cuda --out "$OUT_DIR/demo_cuda" > "$OUT_DIR/demo_cuda.log" 2>&1 || status=1
tail -40 "$OUT_DIR/demo_cuda.log"
cp "$OUT_DIR/demo_cuda/summary.json" "$OUT_DIR/demo_summary.json" 2>/dev/null
exit $status
