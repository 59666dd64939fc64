"""FU: forward-KL constrained data unlearning (math.md section 5).

    min_p KL(q || p)   s.t.   KL(q_u || p) >= b

With the ELBO bounding ``-log p``, the Lagrangian is a denoising loss with signed
per-sample weights: ``+1`` on retained samples, ``-lambda_j`` on forget sample ``j``. One
dual variable per forget sample, indexed by the sample's id and updated from that
sample's own loss, puts more weight on the samples that are hard to forget. The retained
term is data denoising (``retain="data"``) or, with lower variance, distillation from the
frozen model on the same ``x_t`` (``retain="distill"``).

Estimated, not exact: the ELBO is a bound, not the likelihood, and each step sees one
timestep per sample (section 9).
"""

from __future__ import annotations

import torch

from ..duals import DualVariables
from .base import FORGET, NOISE, Batch, Method, Recipe, check_all, constant, per_role_mean, role_rows

RETAIN_TERMS = ("data", "distill")


class ForwardKLUnlearning(Method):
    """Args:
        num_forget_samples: size of the forget set (sample ids are 0..n-1).
        bound: ``b``: the denoising loss (units of ``w * dist``) each forget sample must reach.
        dual_lr, lambda_max, init_lambda: the dual step; ``lambda_max`` bounds the ascent.
        dual_kp: proportional gain of the dual update (0: projected ascent; duals.py).
        retain: ``"data"`` or ``"distill"``.
    """

    name = "fu"

    def __init__(self, num_forget_samples: int, *, bound: float = 0.5, dual_lr: float = 0.5,
                 lambda_max: float = 1.0, init_lambda: float = 0.2, retain: str = "distill", dual_kp: float = 0.0):
        if num_forget_samples < 1:
            raise ValueError("num_forget_samples: the forget set is empty")
        if retain not in RETAIN_TERMS:
            raise ValueError(f"retain: expected one of {RETAIN_TERMS}, got {retain!r}")
        self.retain = retain
        self.duals = DualVariables(num_forget_samples, bound, lr=dual_lr, lambda_max=lambda_max,
                                   init=init_lambda, ema=1.0, kp=dual_kp)

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        forget = batch.role == FORGET
        if batch.sample_id is None:
            raise ValueError("batch.sample_id: FU needs the id of every forget sample")
        check_all(~(forget & (batch.sample_id < 0)), "batch.sample_id: FU needs the id of every forget sample")
        lam = self.duals.lambdas.to(w.device, torch.float32)[batch.sample_id.clamp(min=0)]
        signed = torch.where(forget, -lam * w, w)
        noise = torch.full_like(batch.cond, NOISE)
        slot = noise if self.retain == "data" else torch.where(forget, noise, batch.cond)
        coeffs = constant([[1.0, -1.0]], w.device).expand(len(batch), 1, 2)
        weights = per_role_mean(signed, batch.role)[:, None]
        return Recipe(batch.cond, slot[:, None], coeffs, weights,
                      role_rows(batch, "none" if self.retain == "data" else "retain"))

    def update(self, batch: Batch, recipe: Recipe, dist: torch.Tensor, w: torch.Tensor, t=None) -> None:
        forget = batch.role == FORGET
        self.duals.update(batch.sample_id.clamp(min=0), w * dist[:, 0], mask=forget)

    def metrics(self) -> dict[str, float]:
        return self.duals.metrics("fu")
