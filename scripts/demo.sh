#!/usr/bin/env bash
# The main job of the README: sets up .venv, then unlearns a digit from the embedded
# class-conditional DDPM and evaluates it before and after (about 60 s on 2 idle cores).
# Arguments go to `unlearn-fast demo` (e.g. --forget 7 --method esd --out my_demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$VENV/bin/unlearn-fast" demo "$@"
