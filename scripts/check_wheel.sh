#!/usr/bin/env bash
# The installed package, checked the way a user gets it: builds the sdist, builds the wheel
# from that sdist (so the sdist is shown to build on its own), checks both hold every file
# under unlearn_fast/assets/ (and the sdist csrc/), installs the wheel with its
# [diffusers] extra into a fresh virtualenv (torch from the local wheel, nothing else beyond
# the package index), then from a folder outside the checkout imports it and runs both
# embedded demos at tiny settings. The build and the virtualenv are cached in .wheel-check/
# and reused while the sources are unchanged. Called by scripts/test.sh; needs .venv
# (scripts/env.sh). UNLEARN_FAST_SKIP_WHEEL_CHECK=1 skips it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"          # the build environment (torch, setuptools, ninja, build)
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${UNLEARN_FAST_TORCH:-torch==2.13.0}"
CACHE="$ROOT/.wheel-check"
start=$SECONDS

# What goes into the sdist and the wheel: every tracked or new file of these paths.
HASH="$( { echo "$TORCH_SPEC"; git ls-files -co --exclude-standard -- setup.py pyproject.toml MANIFEST.in README.md \
           csrc unlearn_fast docs | sort | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done; } \
         | sha256sum | cut -c1-16)"
VENV="$CACHE/venv"
if [ ! -f "$CACHE/stamp" ] || [ "$(cat "$CACHE/stamp")" != "$HASH" ] || [ ! -x "$VENV/bin/unlearn-fast" ]; then
    rm -rf "$CACHE"
    mkdir -p "$CACHE/dist"
    echo "[wheel] building the sdist"
    "$PY" -m build --sdist --no-isolation --outdir "$CACHE/dist" . >"$CACHE/sdist.log" 2>&1 \
        || { cat "$CACHE/sdist.log"; echo "check_wheel: FAILED: the sdist did not build"; exit 1; }
    SDIST="$(ls "$CACHE"/dist/*.tar.gz)"
    echo "[wheel] building the wheel from $(basename "$SDIST") (compiles the C++ extension)"
    MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$CACHE/dist" "$SDIST" \
        >"$CACHE/wheel.log" 2>&1 \
        || { cat "$CACHE/wheel.log"; echo "check_wheel: FAILED: the wheel did not build from the sdist"; exit 1; }
    WHEEL="$(ls "$CACHE"/dist/*.whl)"
    "$PY" "$ROOT/scripts/check_dist_contents.py" "$SDIST" "$WHEEL"
    echo "[wheel] installing $(basename "$WHEEL") into a fresh virtualenv"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q "$WHEEL[diffusers]"
    echo "$HASH" >"$CACHE/stamp"
else
    WHEEL="$(ls "$CACHE"/dist/*.whl)"
    echo "[wheel] reusing $(basename "$WHEEL") and its virtualenv (sources unchanged)"
fi

# From outside the checkout, with nothing of it on the path.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/unlearn_fast_wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export PYTHONPATH="" PYTHONNOUSERSITE=1
"$VENV/bin/python" - "$VENV" <<'EOF'
import os, sys
import unlearn_fast
where = os.path.realpath(unlearn_fast.__file__)
assert where.startswith(os.path.realpath(sys.argv[1])), f"imported from {where}, not the installed wheel"
names = unlearn_fast.backends()
assert "cpu" in names, f"backends() = {names}: the C++ kernel is missing from the wheel"
print(f"[wheel] unlearn_fast {unlearn_fast.__version__} from {os.path.dirname(where)}: backends {names}")
EOF
for model in class text; do
    "$VENV/bin/unlearn-fast" demo --model "$model" --forget 7 --steps 2 --per-class 2 --threads 2 \
        --out "$WORK/$model" >"$WORK/$model.log" 2>&1 \
        || { cat "$WORK/$model.log"; echo "check_wheel: FAILED: unlearn-fast demo --model $model"; exit 1; }
    [ -s "$WORK/$model/report.json" ] || { echo "check_wheel: FAILED: no report from the $model demo"; exit 1; }
    echo "[wheel] unlearn-fast demo --model $model (2 steps, 2 samples per class): OK"
done
echo "check_wheel: OK: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB) installs and runs both demos ($((SECONDS - start)) s)"
