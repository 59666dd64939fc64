#!/usr/bin/env bash
# Compiles the whole extension with the CUDA kernel forced, against a CUDA build of torch in
# .venv-cuda, into a throwaway directory (the CPU build in unlearn_fast/ is left alone), and
# checks the library holds the CUDA kernel. Needs nvcc, not a GPU. Re-runnable: the venv
# is reused and only missing packages are installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_VERSION="2.14.1"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"  # the nvcc on PATH may be a wrapper: use the toolkit's
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS=2
export UNLEARN_FAST_CUDA=1

if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "check_cuda_build: skipped: nvcc not found at $CUDA_HOME/bin/nvcc"
  exit 0
fi

VENV="$ROOT/.venv-cuda"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
  rm -rf "$VENV"  # a half-made venv from an interrupted run
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi

# Install only what is missing (a CUDA build of torch at the pinned version included).
missing=()
if ! "$PY" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys
import torch
ok = torch.__version__.split("+")[0] == sys.argv[1] and torch.version.cuda is not None
sys.exit(0 if ok else 1)
EOF
then
  missing+=("torch==$TORCH_VERSION")
fi
for mod in setuptools wheel ninja numpy; do
  "$PY" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if ((${#missing[@]})); then
  echo "check_cuda_build: installing ${missing[*]} into .venv-cuda"
  "$PY" -m pip install --quiet "${missing[@]}"
fi
export PATH="$VENV/bin:$CUDA_HOME/bin:$PATH"  # ninja from the venv, the toolkit's nvcc

TMP="$(mktemp -d "${TMPDIR:-/tmp}/unlearn_fast_cuda_build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
LOG="$TMP/build.log"

start=$SECONDS
if ! "$PY" setup.py build_ext --build-temp "$TMP/temp" --build-lib "$TMP/lib" >"$LOG" 2>&1; then
  cat "$LOG"
  if grep -q "C++20 or later compatible compiler is required" "$LOG"; then
    echo "check_cuda_build: hint: this torch needs C++20; setup.py must not force -std=c++17"
  fi
  echo "check_cuda_build: FAILED: the CUDA build did not compile (log above)"
  exit 1
fi
elapsed=$((SECONDS - start))

# Warnings located in our own sources (torch's and CUDA's headers are not ours) are shown.
if grep -F "$ROOT/csrc/" "$LOG" | grep -iq "warning"; then
  grep -F "$ROOT/csrc/" "$LOG" | grep -i -A3 "warning"
  echo "check_cuda_build: warnings above come from csrc/"
fi

SO="$(find "$TMP/lib" -name '_C*.so' -print -quit)"
if [[ -z "$SO" ]]; then
  cat "$LOG"
  echo "check_cuda_build: FAILED: no _C*.so was produced"
  exit 1
fi
# Into a file first: `nm | grep -q` under pipefail fails when grep stops reading early.
nm -C "$SO" >"$TMP/symbols.txt"
if ! grep -q "unlearn_fast::fused_eps_loss_cuda(" "$TMP/symbols.txt"; then
  echo "check_cuda_build: FAILED: $(basename "$SO") lacks unlearn_fast::fused_eps_loss_cuda"
  exit 1
fi
if ! grep -q "fused_eps_loss_kernel" "$TMP/symbols.txt"; then
  echo "check_cuda_build: FAILED: $(basename "$SO") lacks the device kernel stubs"
  exit 1
fi
echo "check_cuda_build: OK: $(basename "$SO") built with the CUDA kernel (sm ${TORCH_CUDA_ARCH_LIST}, ${elapsed}s, torch $("$PY" -c 'import torch; print(torch.__version__)'))"
