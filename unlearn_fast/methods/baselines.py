"""The classic baselines, as configurations of the same machinery.

- ``esd`` (Gandikota et al. 2023): RU with a hand-fixed guidance weight ``eta``:
  ``eps* = eps(x_t, anchor) - eta (eps(x_t, concept) - eps(x_t, anchor))``, ``x_t`` from
  partial sampling of the student. ESD-u trains all but cross-attention, ESD-x only
  cross-attention (``train_params``); a class-conditional UNet has no cross-attention,
  so there ESD-u trains everything.
- ``ablation`` (Concept Ablation, Kumari et al. 2023, model-based): regress the concept
  onto the frozen model's prediction for an anchor concept.
- ``neggrad`` (gradient ascent / NegGrad+): retained denoising loss minus ``alpha`` times
  the forget denoising loss, fixed weights.
- ``finetune``: plain fine-tuning on retained data (forget samples get weight 0).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import FORGET, NOISE, Batch, Method, Recipe, anchor_of, check_anchor, constant, per_role_mean, role_rows
from .ru import ReverseKLUnlearning


class ESD(ReverseKLUnlearning):
    name = "esd"
    default_source = "student"

    def __init__(self, forget: Sequence[int], anchor: int | torch.Tensor, *, num_conditions: int, eta: float = 1.0,
                 retain_weight: float = 0.0, variant: str = "u"):
        if variant not in ("u", "x"):
            raise ValueError(f"variant: expected 'u' (all but cross-attention) or 'x', got {variant!r}")
        super().__init__(forget, anchor, num_conditions=num_conditions, fixed_alpha=eta,
                         retain_weight=retain_weight)
        self.default_train_params = "no_cross_attn" if variant == "u" else "cross_attn"


class ConceptAblation(Method):
    name = "ablation"

    def __init__(self, anchor: int | torch.Tensor, retain_weight: float = 1.0):
        self.anchor = check_anchor(anchor, ())
        self.retain_weight = retain_weight

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        forget = batch.role == FORGET
        slot = torch.where(forget, anchor_of(self, batch.cond), batch.cond)
        coeffs = constant([[1.0, -1.0]], w.device).expand(len(batch), 1, 2)
        weights = per_role_mean(torch.where(forget, w, self.retain_weight * w), batch.role)
        return Recipe(batch.cond, slot[:, None], coeffs, weights[:, None], role_rows(batch, "all"))


class NegGrad(Method):
    """Retain denoising minus ``alpha`` x forget denoising (``alpha = 0``: fine-tuning)."""

    name = "neggrad"

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        forget = batch.role == FORGET
        coeffs = constant([[1.0, -1.0]], w.device).expand(len(batch), 1, 2)
        weights = per_role_mean(torch.where(forget, -self.alpha * w, w), batch.role)
        return Recipe(batch.cond, torch.full_like(batch.cond, NOISE)[:, None], coeffs, weights[:, None],
                      role_rows(batch, "none"))


class Finetune(NegGrad):
    name = "finetune"

    def __init__(self):
        super().__init__(alpha=0.0)
