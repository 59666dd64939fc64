"""LU: likelihood-constrained unlearning (math.md section 6).

    min_p KL(p || q)   s.t.   E_{x~p}[ r(x) ] <= eps,   r = q_u / q

The minimiser is ``p* ∝ q exp(-lambda r)``, whose noise prediction is an ESD target with a
per-sample guidance weight, ``eps* = eps_q - lambda r(x) (eps_u - eps_q)``: samples that look
like the forget concept are pushed away, the others are left alone. ``log r`` is estimated
from ELBO differences with the same noise,
``log r ≈ w (||eps - eps_q(x_t)||^2 - ||eps - eps_u(x_t)||^2)``: the fused op with two heads
over the teacher's predictions, run once without gradient before the loss.

Estimated, not exact: a single-timestep estimate of ``log r`` (clipped to
``[-log_ratio_clip, log_ratio_clip]``), ``x_t`` from forward-noised pool or data samples
rather than from ``p`` itself (section 9). The estimate reads the teacher only, so the dual
does not see the student: it rises to ``lambda_max`` or falls to 0 (docs/math.md section 6).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..duals import DualVariables
from ..ops import fused_eps_loss
from .base import FORGET, NOISE, Batch, Method, Recipe, anchor_of, check_anchor, constant, per_role_mean, role_rows


class LikelihoodUnlearning(Method):
    """Args:
        forget: condition ids of the forget distribution ``q_u``.
        anchor: condition id of ``q`` (the null condition), or a per-condition table of them.
        bound: ``eps``, the allowed mean likelihood ratio.
        dual_lr, lambda_max, init_lambda: the dual step.
        dual_kp: proportional gain of the dual update (0: projected ascent; duals.py).
        retain_weight: weight of the retain distillation term.
    """

    name = "lu"

    def __init__(self, forget: Sequence[int], anchor: int | torch.Tensor, *, bound: float = 0.5, dual_lr: float = 1.0,
                 lambda_max: float = 5.0, init_lambda: float = 1.0, retain_weight: float = 1.0,
                 log_ratio_clip: float = 5.0, dual_kp: float = 0.0):
        if not forget:
            raise ValueError("forget: expected at least one condition to erase, got none")
        self.forget = list(forget)
        self.anchor = check_anchor(anchor, self.forget)
        self.retain_weight = retain_weight
        self.log_ratio_clip = log_ratio_clip
        self.duals = DualVariables(1, bound, lr=dual_lr, lambda_max=lambda_max, init=init_lambda,
                                   direction="leq", kp=dual_kp)
        self._ratio = None

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        forget = batch.role == FORGET
        one, zero = torch.ones_like(w), torch.zeros_like(w)
        slot1 = torch.where(forget, anchor_of(self, batch.cond), batch.cond)  # eps_q
        slot2 = torch.where(forget, batch.cond, torch.full_like(batch.cond, NOISE))  # eps_u
        slot3 = torch.full_like(batch.cond, NOISE)  # the true noise, for log r
        # head 0's coefficients depend on r(x): filled in by refine(); retain rows are final
        target = torch.stack([one, -one, zero, zero], -1)
        weights = per_role_mean(torch.where(forget, w, self.retain_weight * w), batch.role)
        return Recipe(batch.cond, torch.stack([slot1, slot2, slot3], 1), target[:, None], weights[:, None],
                      role_rows(batch, "all", "forget", "none"))

    def refine(self, recipe: Recipe, pred: torch.Tensor, slots: list[torch.Tensor], w: torch.Tensor,
               reduction: str, backend: str) -> Recipe:
        eps_q, eps_u, noise = slots
        heads = constant([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], w.device)  # eps - eps_q, eps - eps_u
        with torch.no_grad():
            _, dist = fused_eps_loss(noise, [eps_q, eps_u], heads, torch.zeros(len(w), 2, device=w.device),
                                     reduction=reduction, backend=backend)
        log_r = (w * (dist[:, 0] - dist[:, 1])).clamp(-self.log_ratio_clip, self.log_ratio_clip)
        forget = recipe.teacher_conds[:, 1] != NOISE
        ratio = torch.where(forget, log_r.exp(), torch.zeros_like(log_r))
        self._ratio = ratio
        g = self.duals.lambdas.to(w.device, torch.float32) * ratio  # per-sample guidance
        coeffs = recipe.coeffs.clone()
        coeffs[:, 0, 1] = torch.where(forget, -(1 + g), coeffs[:, 0, 1])
        coeffs[:, 0, 2] = torch.where(forget, g, coeffs[:, 0, 2])
        return Recipe(recipe.student_cond, recipe.teacher_conds, coeffs, recipe.weights, recipe.teacher_rows)

    def update(self, batch: Batch, recipe: Recipe, dist: torch.Tensor, w: torch.Tensor, t=None) -> None:
        if self._ratio is None:
            return
        # every rank updates (and all-reduces) at every step, with or without forget samples
        forget = batch.role == FORGET
        self.duals.update(torch.zeros_like(batch.cond), self._ratio, mask=forget)

    def metrics(self) -> dict[str, float]:
        return self.duals.metrics("lu", names=["ratio"])
