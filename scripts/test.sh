#!/usr/bin/env bash
# The test command of the README (and of .ci/run): sets up .venv, checks that the CUDA
# sources still compile (when nvcc is present; UNLEARN_FAST_SKIP_CUDA_BUILD=1 skips), that
# the wheel installs into a fresh virtualenv and runs both demos (scripts/check_wheel.sh;
# UNLEARN_FAST_SKIP_WHEEL_CHECK=1 skips), then runs the whole test suite. Extra arguments
# go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
if [ "${UNLEARN_FAST_SKIP_CUDA_BUILD:-0}" != "1" ]; then
    bash "$ROOT/scripts/check_cuda_build.sh"
fi
if [ "${UNLEARN_FAST_SKIP_WHEEL_CHECK:-0}" != "1" ]; then
    bash "$ROOT/scripts/check_wheel.sh"   # the wheel a user installs, from a fresh virtualenv
fi
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
