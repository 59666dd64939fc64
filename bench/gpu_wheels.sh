#!/usr/bin/env bash
# Downloads the wheels of bench/gpu_wheels.txt for the GPU image (CPython 3.12, x86-64) into
# .whl/, which git ignores through .git/info/exclude; a GPU call then names .whl in carry.
# Fails, naming the package, when one cannot be fetched for that Python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
grep -v '^#' bench/gpu_wheels.txt | grep -v '^$' | while read -r spec; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$spec" || { echo "gpu_wheels: FAILED: $spec for CPython 3.12"; exit 1; }
done
echo "gpu_wheels: OK: $(ls .whl | tr '\n' ' ')($(du -sh .whl | cut -f1))"
