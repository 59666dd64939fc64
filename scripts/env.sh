# Sourced by scripts/test.sh and scripts/demo.sh: creates or reuses .venv in the repo
# root, installs torch and the test/demo dependencies, and (re)builds the C++ extension
# when its sources changed. Override the torch requirement with UNLEARN_FAST_TORCH
# (default torch==2.13.0; any torch>=2.6 works, a CUDA build also builds the CUDA kernel).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$PY" ]; then
    echo "[env] creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip setuptools wheel
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[env] installing ${UNLEARN_FAST_TORCH:-torch==2.13.0}"
    "$PY" -m pip install -q "${UNLEARN_FAST_TORCH:-torch==2.13.0}"
fi

# Rebuild when the extension's sources or the package metadata change.
STAMP="$VENV/.unlearn_fast_build"
HASH="$(cat "$ROOT"/setup.py "$ROOT"/pyproject.toml "$ROOT"/csrc/*.h "$ROOT"/csrc/*.cpp "$ROOT"/csrc/cuda/*.cu 2>/dev/null | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ] || ! "$PY" -c "import unlearn_fast._C" 2>/dev/null; then
    echo "[env] installing unlearn_fast (builds the C++ extension, about 2 minutes)"
    # numpy<2.4: triton 3.6's interpreter (used by the CPU tests) breaks with numpy 2.4
    "$PY" -m pip install -q "numpy<2.4" ninja
    (cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install -q --no-build-isolation -e ".[diffusers,test,triton]")
    echo "$HASH" > "$STAMP"
fi
