"""Save tiny random pipelines of every family (SD 1.x, SD 2.x-v, SDXL, SD3, Flux, DiT) to try the
engine offline: ``python scripts/make_tiny_pipelines.py --out tiny`` writes ``tiny/<family>/``.

They are built from configs (``unlearn_fast.models.tiny``) and saved with diffusers' own
``save_pretrained``; they draw noise at 16x16 pixels and train in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unlearn_fast.models import tiny  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tiny", help="folder to write <family>/ pipelines into (default: tiny)")
    ap.add_argument("--family", nargs="+", default=list(tiny.BUILDERS), choices=list(tiny.BUILDERS))
    args = ap.parse_args()
    for name in args.family:
        path = tiny.save(name, os.path.join(args.out, name))
        print(f"{name:6s} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
