"""A disk cache of evaluations that depend only on fixed inputs: a saved model's files, the evaluator's settings, the concept.

The shapes demo evaluates the embedded model before every erasure with the same seeds, sampler
and classifier; that result is a function of those inputs, so it is computed once and read back
(``cached_evaluation``). The key hashes every file of the model folder and of the classifier,
the settings and the package version; anything else (another model, another seed) is a miss.
The folder is ``$UNLEARN_FAST_CACHE``, else ``$XDG_CACHE_HOME/unlearn_fast``, else
``~/.cache/unlearn_fast``. A file that cannot be read is recomputed and replaced, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import torch


def cache_dir() -> Path:
    """Where cached evaluations live (see the module docstring)."""
    if os.environ.get("UNLEARN_FAST_CACHE"):
        return Path(os.environ["UNLEARN_FAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unlearn_fast"


def files_digest(*paths: str | os.PathLike) -> str:
    """sha256 over the relative names and bytes of every file under ``paths`` (files or folders)."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def cached_evaluation(kind: str, key: dict, compute: Callable[[], dict], *, enabled: bool = True) -> tuple[dict, bool]:
    """``(result, hit)``: the result stored under ``kind`` and ``key`` (JSON-serialisable), or
    ``compute()``'s, stored for next time. ``enabled=False`` always computes and stores nothing."""
    if not enabled:
        return compute(), False
    from .. import __version__

    digest = hashlib.sha256(json.dumps({**key, "version": __version__}, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / f"{kind}-{digest}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True), True
        except Exception as e:  # a truncated or foreign file: recompute and replace it
            warnings.warn(f"evaluation cache: cannot read {path} ({e}); evaluating again")
    result = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(result, tmp)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: the run goes on without the cache
        warnings.warn(f"evaluation cache: cannot write {path} ({e}); the result is not cached")
    return result, False
