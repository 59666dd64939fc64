"""Reports of an evaluation: the JSON file, the before/after table and the PNG grid."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch

METRICS = ("ua", "retain_acc", "neighbor_acc", "fid", "kl_to_original")


def public(result: dict) -> dict:
    """An evaluation result without its samples (what goes into a JSON report)."""
    return {k: v for k, v in result.items() if k != "samples"}


def write_json(path: str, report: dict) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves half a report."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def table(before: dict, after: dict) -> str:
    """A markdown before/after table of the headline metrics."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key in METRICS:
        if key in before or key in after:
            lines.append(f"| {key} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def save_grid(path: str, before: torch.Tensor, after: torch.Tensor, cond: torch.Tensor, *, num_classes: int = 10,
              per_row: int = 8, scale: int = 3) -> None:
    """PNG: one row per class, ``per_row`` samples before | a gap | the same seeds after."""
    from PIL import Image

    rows = []
    for c in range(num_classes):
        idx = (cond == c).nonzero().squeeze(1)[:per_row]
        left = torch.cat(list(before[idx, 0]), dim=1)
        right = torch.cat(list(after[idx, 0]), dim=1)
        gap = torch.ones(left.shape[0], 4)
        rows.append(torch.cat([left, gap, right], dim=1))
        rows.append(torch.ones(1, rows[-1].shape[1]))
    grid = torch.cat(rows[:-1]).clamp(-1, 1)
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
