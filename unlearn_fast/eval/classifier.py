"""A small CNN digit classifier at ``IMAGE_SIZE`` x ``IMAGE_SIZE`` used to evaluate samples.

Input: float (N, 1, H, W) images in [-1, 1] (the convention of :mod:`unlearn_fast.data`);
``forward`` returns (N, num_classes) logits and ``features`` the (N, feature_dim)
penultimate activations (after the hidden ReLU), used for a Frechet distance.

The shipped weights live in ``unlearn_fast/assets/classifier.safetensors`` with the
architecture in ``unlearn_fast/assets/classifier_config.json``; they are produced by
``scripts/train_classifier.py`` (see ``unlearn_fast/assets/README.md``).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
import torch.nn as nn

from ..asset_files import ASSETS_DIR, require_embedded

CLASSIFIER_WEIGHTS_FILE = os.path.join(ASSETS_DIR, "classifier.safetensors")
CLASSIFIER_CONFIG_FILE = os.path.join(ASSETS_DIR, "classifier_config.json")
# the concept detector of continual unlearning's target checks: trained like the classifier
# but on another seed and width (16, 32), so the evaluator does not judge its own choices
DETECTOR_WEIGHTS_FILE = os.path.join(ASSETS_DIR, "detector.safetensors")


class DigitClassifier(nn.Module):
    """conv-conv-pool, conv-conv-pool, fc(feature_dim), fc(num_classes).

    With the defaults at 16x16: 1->32->32 (16x16), pool 8x8, 32->64->64, pool 4x4,
    1024 -> 128 features -> 10 logits (~0.2 M parameters).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 16,
        channels: tuple = (32, 64),
        feature_dim: int = 128,
        dropout: float = 0.3,
    ):
        super().__init__()
        c1, c2 = channels
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            channels=[c1, c2],
            feature_dim=feature_dim,
            dropout=dropout,
        )
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = c2 * (image_size // 4) ** 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, feature_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, (N, feature_dim)."""
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Argmax class of each image (evaluation mode is the caller's business)."""
        return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def load_classifier(
    weights: Optional[str] = None,
    config: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> DigitClassifier:
    """The shipped classifier, in eval mode with gradients off (no download)."""
    weights = weights or CLASSIFIER_WEIGHTS_FILE
    shipped = {CLASSIFIER_WEIGHTS_FILE: "classifier", DETECTOR_WEIGHTS_FILE: "detector"}
    if weights in shipped:
        require_embedded(shipped[weights])
    config = config or (
        CLASSIFIER_CONFIG_FILE if weights == CLASSIFIER_WEIGHTS_FILE else os.path.splitext(weights)[0] + "_config.json"
    )
    return build_from_files(DigitClassifier, weights, config, device, script="scripts/train_classifier.py")


def build_from_files(cls, weights: str, config: str, device, *, script: str):
    """A classifier of class ``cls`` from its safetensors ``weights`` and ``*_config.json`` (its
    constructor arguments; other keys, e.g. the training record, ignored), in eval mode with
    gradients off."""
    from safetensors.torch import load_file

    if not os.path.exists(weights):
        raise FileNotFoundError(f"weights: {cls.__name__} weights not found at {weights} (expected a safetensors "
                                f"file, as {script} writes)")
    cfg = {}
    if os.path.exists(config):
        with open(config) as f:
            cfg = json.load(f)
    cfg = {k: v for k, v in cfg.items() if k in cls.__init__.__code__.co_varnames}
    if "channels" in cfg:
        cfg["channels"] = tuple(cfg["channels"])
    model = cls(**cfg)
    model.load_state_dict(load_file(weights, device="cpu"))
    model.to(device).eval().requires_grad_(False)
    return model


def load_detector(device: Union[str, torch.device] = "cpu") -> DigitClassifier:
    """The shipped concept detector (``scripts/train_classifier.py --seed 1 --channels 16,32``)."""
    return load_classifier(DETECTOR_WEIGHTS_FILE, device=device)
