"""RU: reverse-KL constrained concept unlearning (math.md section 4).

    min_p KL(p || q_a)   s.t.   KL(p || q_f^i) >= b_i,   i = 1..m

For fixed duals the Lagrangian's minimiser has the noise prediction
``eps* = eps_a - alpha_i (eps_f^i - eps_a)``, ``alpha_i = lambda_i / (1 - sum lambda)``, so the
primal step regresses the student onto ``eps*`` (weight ``1 - sum lambda``), and ESD is RU
with a hand-fixed lambda. Here each forget sample shows one concept ``i`` and its target
uses that concept's term (the other concepts' terms are not evaluated at its ``x_t``).
The constraint estimate of the same step, ``w * ||eps_theta - eps_f^i||^2``, is a second
head with weight 0: it costs nothing beyond the pass that computes the loss.

``divergence="hellinger"`` (section 7) uses the per-step squared Hellinger distance
``1 - exp(-KL_t / 4)`` of equal-variance Gaussians for the objective and the constraint;
its gradient is the KL gradient times ``exp(-KL_t / 4) / 4``, a per-sample weight that
needs the distances first, so the fused op runs once without gradient to get them.
Bounds are then in (0, 1). KL_t is exact only with ``weighting="kl"`` and
``reduction="sum"``; with other weightings it is a scaled stand-in.

``bound_units="nats"`` measures the constraint in nats whatever weighting trains the primal:
the whole reverse chain's KL to the forget concept, its heaviest timesteps probed every step
(``nats.py``); the primal's gradient is unchanged (the constraint head has weight 0).

Estimated, not exact: ``x_t`` is drawn from data or from the student without
differentiating through the sampling, which biases the reverse-KL gradient (section 9).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..duals import DualVariables
from ..ops import fused_eps_loss
from .nats import NatsConstraint
from .base import (FORGET, NOISE, Batch, Method, Recipe, anchor_of, check_all, check_anchor, on_device, per_role_mean,
                   role_rows)

DIVERGENCES = ("kl", "hellinger")
BOUND_UNITS = ("weighted", "nats")
#: the default dual step in each unit (nats: per unit of relative error)
WEIGHTED_DUAL_LR, NATS_DUAL_LR = 2.0, 0.03


class ReverseKLUnlearning(Method):
    """Args:
        forget: condition ids of the concepts to erase (one dual variable each).
        anchor: condition id of the anchor ``q_a`` (the null condition, or an anchor concept), or a
            per-condition table of them (each forget condition its own anchor; ``base.check_anchor``).
        bound: ``b_i``, the separation each concept must reach (the units of ``w * dist``).
        dual_lr, lambda_max, init_lambda: the dual step (``lambda_max`` below ``1 / m``); ``dual_lr``
            None: 2.0 in weighted units, 0.03 per unit of relative error in nats (the step that
            holds the bound with the steadiest dual in bench/frontier.py's comparison).
        dual_kp: proportional gain of the dual update (0: projected ascent; duals.py).
        retain_weight: weight of the retain-prompt distillation term (0 disables it).
        divergence: ``"kl"`` or ``"hellinger"``.
        bound_units: ``"weighted"`` (the units of the training weighting, ``w * dist``) or
            ``"nats"`` (the chain's KL to the concept, ``nats.py``; needs ``divergence="kl"``).
        shared_dual: one constraint and one dual for all of ``forget`` (they are one concept's
            prompts, e.g. a style named in 25 prompts): its estimate pools their forget rows. Without
            it each condition is a concept with its own dual, and as ``sum lambda`` is capped at
            0.95 the primal's forget weight ``1 - sum lambda`` shrinks towards 0.05 as conditions
            are added.
        nats_probe: with ``"nats"``, how many of the heaviest timesteps are probed each step.
            With ``"nats"`` the dual step is per unit of relative error, ``(b - g) / b`` (the
            update uses ``dual_lr / bound`` and ``dual_kp / bound``), so one ``dual_lr`` serves every bound.
    """

    name = "ru"

    def __init__(self, forget: Sequence[int], anchor: int | torch.Tensor, *, num_conditions: int, bound: float = 0.02,
                 dual_lr: float | None = None, lambda_max: float | None = None, init_lambda: float = 0.3,
                 retain_weight: float = 1.0, divergence: str = "kl", fixed_alpha: float | None = None, dual_kp: float = 0.0,
                 bound_units: str = "weighted", nats_probe: int = 4, shared_dual: bool = False):
        if not forget:
            raise ValueError("forget: expected at least one condition to erase, got none")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {divergence!r}")
        if bound_units not in BOUND_UNITS:
            raise ValueError(f"bound_units: expected one of {BOUND_UNITS}, got {bound_units!r}")
        if bound_units == "nats" and divergence != "kl":
            raise ValueError(f"bound_units: 'nats' measures a KL; divergence {divergence!r} has its own units "
                             f"(use bound_units='weighted')")
        if not isinstance(shared_dual, bool):
            raise ValueError(f"shared_dual: expected true or false, got {shared_dual!r}")
        self.forget = list(forget)
        self.shared_dual = shared_dual
        m = self.num_concepts = 1 if self.shared_dual else len(self.forget)  # one constraint and dual each
        self.anchor = check_anchor(anchor, self.forget)
        self.retain_weight = retain_weight
        self.divergence = divergence
        self.fixed_alpha = fixed_alpha  # ESD: a hand-fixed guidance weight, no duals
        self.nats = NatsConstraint(m, nats_probe) if bound_units == "nats" and fixed_alpha is None else None
        self.concept_of = torch.full((num_conditions,), -1, dtype=torch.long)
        self.concept_of[torch.tensor(self.forget)] = 0 if self.shared_dual else torch.arange(m)
        if lambda_max is None:
            lambda_max = 0.95 / m
        if bound_units == "nats" and not bound > 0:
            raise ValueError(f"bound: a bound in nats must be positive, got {bound}")
        per = bound if bound_units == "nats" else 1.0  # nats: steps per unit of relative error
        if dual_lr is None:
            dual_lr = NATS_DUAL_LR if bound_units == "nats" else WEIGHTED_DUAL_LR
        self.duals = None if fixed_alpha is not None else DualVariables(
            m, bound, lr=dual_lr / per, lambda_max=lambda_max, max_total=0.95, init=min(init_lambda, lambda_max),
            kp=dual_kp / per)

    # --- heads -------------------------------------------------------------------------

    def alphas(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_i per concept, 1 - sum lambda)."""
        if self.duals is None:
            alpha = torch.full((self.num_concepts,), float(self.fixed_alpha), device=device)
            return alpha, torch.ones((), device=device)
        lam = self.duals.lambdas.to(device, torch.float32)
        rest = 1 - lam.sum()
        return lam / rest, rest

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        device = batch.cond.device
        concept = on_device(self, "concept_of", device)[batch.cond]
        forget = batch.role == FORGET
        check_all(~(forget & (concept < 0)), "batch: a forget sample's condition is not one of the method's forget conditions")
        alpha, rest = self.alphas(device)
        a = torch.where(forget, alpha[concept.clamp(min=0)], torch.zeros_like(w))
        one, zero = torch.ones_like(w), torch.zeros_like(w)
        # slots: 1 = anchor (forget) or the retain condition itself; 2 = the forget concept
        slot1 = torch.where(forget, anchor_of(self, batch.cond), batch.cond)
        slot2 = torch.where(forget, batch.cond, torch.full_like(batch.cond, NOISE))
        target = torch.stack([one, -(1 + a), a], -1)  # r = eps_theta - eps*
        constraint = torch.stack([one, zero, -one], -1) * forget[:, None]  # r = eps_theta - eps_f
        coeffs = torch.stack([target, constraint], 1)
        head0 = torch.where(forget, rest * w, self.retain_weight * w)
        weights = torch.stack([per_role_mean(head0, batch.role), zero], 1)
        return Recipe(batch.cond, torch.stack([slot1, slot2], 1), coeffs, weights,
                      role_rows(batch, "all", "forget"))

    def refine(self, recipe: Recipe, pred: torch.Tensor, slots: list[torch.Tensor], w: torch.Tensor,
               reduction: str, backend: str) -> Recipe:
        if self.divergence == "kl":
            return recipe
        with torch.no_grad():  # Hellinger: the per-sample weight needs the distances first
            _, dist = fused_eps_loss(pred.detach(), slots, recipe.coeffs, torch.zeros_like(recipe.weights),
                                     reduction=reduction, backend=backend)
        factor = torch.exp(-w * dist[:, 0] / 4) / 4
        forget = recipe.teacher_conds[:, 1] != NOISE
        weights = recipe.weights.clone()
        weights[:, 0] = torch.where(forget, weights[:, 0] * factor, weights[:, 0])
        return Recipe(recipe.student_cond, recipe.teacher_conds, recipe.coeffs, weights, recipe.teacher_rows)

    # --- duals -------------------------------------------------------------------------

    def prepare_step(self, objective, batch: Batch, generator) -> object:
        if self.nats is not None and torch.is_grad_enabled() and objective.update_duals:
            self.nats.probe(objective, batch, on_device(self, "concept_of", batch.cond.device), generator)
        return objective.model

    def constraint_values(self, dist: torch.Tensor, w: torch.Tensor, t: torch.Tensor | None = None,
                          concept: torch.Tensor | None = None) -> torch.Tensor:
        if self.nats is not None:
            if t is None:
                raise ValueError("t: bound_units='nats' needs the samples' timesteps")
            return self.nats.values(dist[:, 1], t, concept)
        kl = w * dist[:, 1]
        return kl if self.divergence == "kl" else 1 - torch.exp(-kl / 4)

    def update(self, batch: Batch, recipe: Recipe, dist: torch.Tensor, w: torch.Tensor, t=None) -> None:
        if self.duals is None:
            return
        forget = batch.role == FORGET
        concept = on_device(self, "concept_of", batch.cond.device)[batch.cond].clamp(min=0)
        self.duals.update(concept, self.constraint_values(dist, w, t, concept), mask=forget)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.nats is not None:
            state["nats"] = self.nats.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.nats is not None and "nats" in state:  # older checkpoints: the probe starts afresh
            self.nats.load_state_dict(state["nats"])

    def metrics(self) -> dict[str, float]:
        if self.duals is None:
            return {}
        return self.duals.metrics("ru", names=["shared"] if self.shared_dual else [str(c) for c in self.forget])


