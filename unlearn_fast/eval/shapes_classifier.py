"""A small two-headed CNN that tells the object and the style of a shapes-benchmark image.

Input: float (N, 3, 32, 32) RGB images in [-1, 1] (the convention of
:mod:`unlearn_fast.data.shapes`). One shared convolutional body feeds two linear heads:
``forward`` returns ``(object_logits [N, 8], style_logits [N, 6])`` and ``features`` the
(N, feature_dim) penultimate activations (after the hidden ReLU), used for a Frechet distance.
One network with two heads (rather than two networks) because object and style are read from
the same edges and textures; the two heads are trained and scored separately.

Shipped weights: ``unlearn_fast/assets/shapes_classifier.safetensors`` (the evaluator) and
``shapes_detector.safetensors`` (a narrower network trained on another seed: the detector that
methods and attacks use, so that nothing is tuned against the evaluator that scores it), each
with its ``*_config.json``; both produced by ``scripts/train_shapes_classifier.py`` (see
``unlearn_fast/assets/README.md``).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from ..asset_files import ASSETS_DIR, require_embedded
from ..data.shapes import NUM_OBJECTS, NUM_STYLES, SHAPES_IMAGE_SIZE

SHAPES_CLASSIFIER_WEIGHTS_FILE = os.path.join(ASSETS_DIR, "shapes_classifier.safetensors")
SHAPES_DETECTOR_WEIGHTS_FILE = os.path.join(ASSETS_DIR, "shapes_detector.safetensors")


def _block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ShapesClassifier(nn.Module):
    """conv-conv-pool (32x32), conv-conv-pool (16x16), conv-pool (8x8), fc(feature_dim), two heads.

    With the defaults: 3->32->32, pool 16x16, 32->64->64, pool 8x8, 64->64, pool 4x4,
    1024 -> 128 features -> 8 object logits and 6 style logits (~0.24 M parameters).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_objects: int = NUM_OBJECTS,
        num_styles: int = NUM_STYLES,
        image_size: int = SHAPES_IMAGE_SIZE,
        channels: tuple = (32, 64, 64),
        feature_dim: int = 128,
        dropout: float = 0.3,
    ):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels: expected three widths (one per resolution), got {tuple(channels)}")
        if image_size % 8:
            raise ValueError(f"image_size: expected a multiple of 8 (three 2x poolings), got {image_size}")
        c1, c2, c3 = (int(c) for c in channels)
        self.config = dict(
            in_channels=in_channels,
            num_objects=num_objects,
            num_styles=num_styles,
            image_size=image_size,
            channels=[c1, c2, c3],
            feature_dim=feature_dim,
            dropout=dropout,
        )
        self.body = nn.Sequential(
            *_block(in_channels, c1), *_block(c1, c1), nn.MaxPool2d(2),
            *_block(c1, c2), *_block(c2, c2), nn.MaxPool2d(2),
            *_block(c2, c3), nn.MaxPool2d(2),
        )
        flat = c3 * (image_size // 8) ** 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, feature_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.object_head = nn.Linear(feature_dim, num_objects)
        self.style_head = nn.Linear(feature_dim, num_styles)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, (N, feature_dim)."""
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(self.features(x))
        return self.object_head(h), self.style_head(h)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(object_ids, style_ids)``: the argmax of each head (evaluation mode is the caller's business)."""
        objs, stys = [], []
        for i in range(0, len(x), batch_size):
            lo, ls = self(x[i : i + batch_size])
            objs.append(lo.argmax(1))
            stys.append(ls.argmax(1))
        return torch.cat(objs), torch.cat(stys)


def shapes_classifier_files(weights: Optional[str] = None) -> Tuple[str, str]:
    """``(weights, config)`` files of a shapes classifier: ``weights`` (default: the shipped
    evaluator) and the ``*_config.json`` beside it."""
    weights = weights or SHAPES_CLASSIFIER_WEIGHTS_FILE
    return weights, os.path.splitext(weights)[0] + "_config.json"


def load_shapes_classifier(
    weights: Optional[str] = None,
    config: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> ShapesClassifier:
    """The shipped shapes evaluator (or ``weights`` with its ``*_config.json``), in eval mode with
    gradients off (no download)."""
    from .classifier import build_from_files

    weights, default_config = shapes_classifier_files(weights)
    shipped = {SHAPES_CLASSIFIER_WEIGHTS_FILE: "shapes_classifier", SHAPES_DETECTOR_WEIGHTS_FILE: "shapes_detector"}
    if weights in shipped:
        require_embedded(shipped[weights])  # a missing shipped file: one clear error naming it
    config = config or default_config
    return build_from_files(ShapesClassifier, weights, config, device, script="scripts/train_shapes_classifier.py")


def load_shapes_detector(device: Union[str, torch.device] = "cpu") -> ShapesClassifier:
    """The shipped shapes detector (``scripts/train_shapes_classifier.py --seed 1 --channels 16,32,32``)."""
    return load_shapes_classifier(SHAPES_DETECTOR_WEIGHTS_FILE, device=device)
