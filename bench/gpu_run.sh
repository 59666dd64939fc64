#!/usr/bin/env bash
# One call on a GPU machine without network: build the extension (CUDA kernel included),
# run the whole test suite (GPU tests run there), then every benchmark; results land in
# $OUT (the device tool's folder) or bench/results/<device>-<date>/.
#
# Before the call, on a machine with network (see the device README):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 --platform any -d .whl \
#       diffusers mlxtend hypothesis pytest-benchmark py-cpuinfo sortedcontainers
# and pass carry=[".whl"] to the run.
set -uo pipefail
cd "$(dirname "$0")/.."
STAMP="$(date -u +%Y-%m-%d)"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
DEVICE="$("$PY" -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-") if torch.cuda.is_available() else "cpu")')"
RESULTS="${OUT:-bench/results/$DEVICE-$STAMP}"
mkdir -p "$RESULTS"
echo "device: $DEVICE, date: $STAMP, results: $RESULTS" | tee "$RESULTS/run.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$RESULTS/run.log" 2>&1

step() {  # step NAME COMMAND...: run, log, keep going on failure, report at the end
    local name=$1; shift
    echo "== $name: $*" | tee -a "$RESULTS/run.log"
    local start=$SECONDS
    "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$RESULTS/run.log"
    tail -5 "$RESULTS/$name.log" | tee -a "$RESULTS/run.log"
}

export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
step build "$PY" -m pip install --no-build-isolation --no-deps -e .
step backends "$PY" -c "import unlearn_fast as uf; print(uf.backends())"
step tests "$PY" -m pytest -q -p no:cacheprovider tests
step kernels "$PY" bench/bench_kernels.py --device cuda --compile default max-autotune \
    --sizes 1x4x64x64 8x4x64x64 32x4x64x64 1x4x128x128 8x4x128x128 32x4x128x128 1x16x128x128 8x16x128x128 \
    32x16x128x128 1x16x16x60x90 8x16x16x60x90 --csv "$RESULTS/kernels.csv"
step kernels_bf16 "$PY" bench/bench_kernels.py --device cuda --dtype bfloat16 --compile default \
    --sizes 8x4x64x64 8x4x128x128 8x16x128x128 --csv "$RESULTS/kernels.csv"
step plots "$PY" bench/plot_kernels.py "$RESULTS/kernels.csv" --out "$RESULTS"
step pytest_benchmark "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_benchmarks.py --benchmark-enable \
    --benchmark-only --benchmark-json "$RESULTS/pytest_benchmark.json"
step step_fp32 "$PY" bench/bench_step.py --device cuda --model sd15 --batch 8 --csv "$RESULTS/step.csv"
step step_bf16 "$PY" bench/bench_step.py --device cuda --model sd15 --batch 8 --teacher-dtype bf16 --csv "$RESULTS/step.csv"
step demo "$PY" -m unlearn_fast.cli demo --out "$RESULTS/demo" --report "$RESULTS/demo.json"
echo "done: $RESULTS" | tee -a "$RESULTS/run.log"
