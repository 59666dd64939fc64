#!/usr/bin/env bash
# The one GPU call (at most 8 minutes on one H100/H200): installs the carried wheels, then
# bench/gpu_run.py builds the extension with the CUDA kernel, checks backends() has cuda and
# triton, runs the GPU tests, the kernel benchmark (max-autotune at one size only) and the
# SD1.5-architecture RU step in fp32 and bf16, printing a one-screen summary as it goes. At
# most four files land in $OUT: summary.md, kernels.csv, step.csv, results.tar.gz (logs and
# plots). Exits non-zero when the build or the backends check fails, or any step fails.
#
# Before the call, here (a machine with network):   bash bench/gpu_wheels.sh
# The call:  device run, carry [".whl"], command "bash bench/gpu_run.sh", timeout_s 540
# Dry run on the CPU (tiny sizes, Triton interpreted; what the test suite runs):
#   bash bench/gpu_run.sh --cpu-dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ "${1:-}" = "--cpu-dry-run" ] && PY="${PYTHON:-.venv/bin/python}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "${1:-}" != "--cpu-dry-run" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_run: FAILED: installing the carried wheels in .whl/"; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
exec "$PY" bench/gpu_run.py "$@"
