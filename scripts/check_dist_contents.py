"""Checks an sdist and a wheel hold what a user needs (called by scripts/check_wheel.sh).

The wheel: every Python module and every file under ``unlearn_fast/assets/`` in the
checkout, the Triton kernels
(``unlearn_fast/kernels/``) and the compiled ``unlearn_fast/_C`` extension. The sdist: the
same assets and modules, ``csrc/`` (so it builds), ``setup.py`` and ``pyproject.toml``.
Usage: python scripts/check_dist_contents.py SDIST.tar.gz WHEEL.whl
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(*paths: str) -> list[str]:
    """Files of the checkout under ``paths`` (tracked, or new and not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *paths], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.split()
    return sorted(f for f in out if os.path.isfile(os.path.join(ROOT, f)) and "__pycache__" not in f)


def missing(expected: list[str], present: set[str]) -> list[str]:
    return [f for f in expected if f not in present]


def main(sdist: str, wheel: str) -> int:
    assets = tracked("unlearn_fast/assets")
    if not assets:
        print("check_dist_contents: FAILED: no files under unlearn_fast/assets/ in the checkout")
        return 1
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
    with tarfile.open(sdist) as t:
        names = t.getnames()
    prefix = names[0].split("/")[0] + "/"
    in_sdist = {n[len(prefix):] for n in names if n.startswith(prefix)}

    problems = []
    kernels = [f for f in tracked("unlearn_fast/kernels") if f.endswith(".py")]
    modules = [f for f in tracked("unlearn_fast") if f.endswith(".py")]
    for what, lost in (
        ("wheel: Python modules", missing(modules, in_wheel)),
        ("wheel: assets", missing(assets, in_wheel)),
        ("wheel: Triton kernels", missing(kernels, in_wheel)),
        ("sdist: assets", missing(assets, in_sdist)),
        ("sdist: sources", missing(tracked("csrc") + modules + ["setup.py", "pyproject.toml"], in_sdist)),
    ):
        if lost:
            problems.append(f"{what}: {len(lost)} missing, e.g. {lost[:3]}")
    if not any(n.startswith("unlearn_fast/_C") and n.endswith((".so", ".pyd")) for n in in_wheel):
        problems.append("wheel: the compiled extension unlearn_fast/_C is missing")
    if problems:
        print("check_dist_contents: FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"[wheel] contents: all {len(assets)} asset files in the wheel and the sdist; "
          f"sdist has csrc/ and every module; wheel {os.path.getsize(wheel) / 2**20:.1f} MiB, "
          f"sdist {os.path.getsize(sdist) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/check_dist_contents.py SDIST.tar.gz WHEEL.whl")
    sys.exit(main(sys.argv[1], sys.argv[2]))
