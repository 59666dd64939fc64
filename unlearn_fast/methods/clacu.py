"""Constrained LACU: every earlier erasure of a continual sequence is a constraint with its own dual.

LACU (``lacu.py``) re-asserts each earlier erasure ``i`` with the fixed weight ``lam_unl``
on its remapped replay rows. Here that weight is a dual variable ``lambda_i`` of the constraint

    m_i(theta) = E || eps_theta(x_t, p_i) - eps_prev(x_t, p_map(i)) ||^2  <=  b_i

(``x_t`` from concept ``i``'s replay samples, the same timestep weight ``w`` as the loss), so
the penalty that keeps ``i`` erased rises only while ``i`` drifts away from its mapping
target, i.e. starts to come back, and falls to zero while it stays mapped. ``m_i`` is read
from the per-sample distances the fused op returns for the loss (``eta = 0``: the mapping
head itself; ``eta > 0``: an extra head with weight 0, the unpushed residual), so the
constraint costs no extra forward pass.

Bounds. ``bounds[i]`` is ``b_i`` when known (a later request of the sequence carries it);
``None`` calibrates it in this run: over the first ``calibration_steps`` steps the running
sum of ``m_i`` is taken at ``lambda_i = init_lambda`` and ``b_i = bound_factor *`` its mean,
i.e. "no worse than ``bound_factor`` times how mapped ``i`` is when this request starts". The
continual runner gives every bound it knows (``bound_factor`` times the erasing request's own
mapping estimate, ``metrics()["clacu/mapping[f]"]``) and calibrates only the others. Dual step (``duals.DualVariables``,
projected ascent on the normalised slack ``m_i / b_i - 1``, running-mean estimates,
all-reduced under DDP).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.distributed as dist

from ..duals import DualVariables
from .base import FORGET, Batch, Recipe, constant, on_device
from .lacu import LocalityAwareContinualUnlearning


def _groups(labels, conditions: list[int], key: str) -> tuple[list, list[int]]:
    """``(unique labels in order, each condition's label index)``; ``labels`` None: one per condition."""
    labels = list(conditions) if labels is None else list(labels)
    if len(labels) != len(conditions):
        raise ValueError(f"{key}: expected one label per condition ({len(conditions)}), got {len(labels)}")
    unique = list(dict.fromkeys(labels))
    return unique, [unique.index(v) for v in labels]


class ConstrainedLACU(LocalityAwareContinualUnlearning):
    """LACU whose earlier erasures (``remapped``) are constraints with duals.

    Args (beyond LACU's):
        bounds: ``b_i`` per remapped condition (same order); ``None`` entries are calibrated.
        bound_factor: ``b_i = bound_factor * m_i`` over the calibration steps.
        calibration_steps: steps whose estimates calibrate the unknown bounds.
        dual_lr, lambda_max, ema: the dual step, its upper clip, the running mean's weight.
        init_lambdas: each constraint's dual at the start (a float for all, or one each).
        remapped_groups: a label per remapped condition; conditions with the same label are one
            constraint (one dual, one bound, their rows pooled in one estimate): a concept named by
            several prompts. Default: each condition its own, labelled by its id. ``bounds`` and
            ``init_lambdas`` then give one value per label, in order of first appearance.
        forget_groups: the same for this request's own forget conditions (the ``mapping[label]``
            estimates a later request's bound is taken from).
    """

    name = "clacu"
    condition_args = LocalityAwareContinualUnlearning.condition_args

    def __init__(self, forget: Sequence[int], *, num_conditions: int, targets: list[Union[int, str]],
                 remapped: Sequence[Union[int, str]] = (), remapped_targets: Sequence[Union[int, str]] = (),
                 bounds: Sequence[float | None] | None = None, bound_factor: float = 1.5,
                 calibration_steps: int = 5, dual_lr: float = 0.5, lambda_max: float = 10.0, ema: float = 0.2,
                 init_lambdas: Union[float, Sequence[float]] = 1.0,
                 remapped_groups: Sequence[Union[int, str]] | None = None,
                 forget_groups: Sequence[Union[int, str]] | None = None, **lacu_kwargs):
        super().__init__(forget, num_conditions=num_conditions, targets=targets, remapped=remapped,
                         remapped_targets=remapped_targets, **lacu_kwargs)
        self.group_labels, group_of = _groups(remapped_groups, self.remapped, "remapped_groups")
        self.forget_labels, forget_group_of = _groups(forget_groups, self.forget, "forget_groups")
        n = len(self.group_labels)
        bounds = [None] * n if bounds is None else list(bounds)
        if len(bounds) != n:
            raise ValueError(f"bounds: expected one bound (or null) per constraint ({n}: {self.group_labels}), got "
                             f"{len(bounds)}")
        if any(b is not None and not b > 0 for b in bounds):
            raise ValueError(f"bounds: expected floats > 0 or null, got {bounds}")
        if not bound_factor > 0:
            raise ValueError(f"bound_factor: expected a float > 0, got {bound_factor}")
        if calibration_steps < 1:
            raise ValueError(f"calibration_steps: expected an int >= 1, got {calibration_steps}")
        inits = [float(init_lambdas)] * n if isinstance(init_lambdas, (int, float)) else [float(v) for v in init_lambdas]
        if len(inits) != n or any(v < 0 for v in inits):
            raise ValueError(f"init_lambdas: expected a float >= 0 or one per constraint ({n}), got {init_lambdas}")
        self.bound_factor = float(bound_factor)
        self.calibration_steps = int(calibration_steps)
        self.remap_index = torch.full((num_conditions,), -1, dtype=torch.long)  # remapped condition -> constraint i
        self.forget_index = torch.full((num_conditions,), -1, dtype=torch.long)  # forget condition -> its group j
        self.forget_index[torch.tensor(self.forget)] = torch.tensor(forget_group_of)
        self.duals = None
        if n:
            self.remap_index[torch.tensor(self.remapped)] = torch.tensor(group_of)
            self.duals = DualVariables(n, 1.0, lr=dual_lr, lambda_max=lambda_max, ema=ema, direction="leq")
            self.duals.lambdas = torch.tensor(inits, dtype=torch.float64).clamp(0, lambda_max)
        self.bounds = torch.tensor([float("nan") if b is None else float(b) for b in bounds], dtype=torch.float64)
        self._calib = torch.zeros(2, max(n, 1), dtype=torch.float64)  # sums, counts of m_i while calibrating
        # m_j of this request's own forget conditions (forget rows): the basis a later request's bound
        # is compared with in reports; an estimate only (lr 0), no dual
        self.current = DualVariables(len(self.forget_labels), 0.0, lr=0.0, lambda_max=1.0, ema=ema, direction="leq")
        self.steps_seen = 0  # host counter: a step count, never read from a device tensor

    # --- heads -------------------------------------------------------------------------

    def mapping_weight(self, student: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.duals is None:
            return self.lam_unl * w
        i = on_device(self, "remap_index", student.device)[student]
        lam = self.duals.lambdas.to(student.device, w.dtype)[i.clamp(min=0)]
        return torch.where(i >= 0, lam * w, self.lam_unl * w)

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        recipe = super().recipe(batch, w)
        if self.eta == 0:  # the mapping head's residual is the constraint's
            return recipe
        # eta > 0: a weight-0 head r = eps_theta - eps_prev(p_map), the unpushed mapping residual
        extra = constant([[1.0, -1.0, 0.0]], w.device, recipe.coeffs.dtype).expand(len(batch), 1, 3)
        return Recipe(recipe.student_cond, recipe.teacher_conds, torch.cat([recipe.coeffs, extra], 1),
                      torch.cat([recipe.weights, torch.zeros_like(recipe.weights)], 1), recipe.teacher_rows)

    # --- duals -------------------------------------------------------------------------

    def update(self, batch: Batch, recipe: Recipe, dist_: torch.Tensor, w: torch.Tensor, t=None) -> None:
        device = dist_.device
        if self.current.lambdas.device != device:  # once: the state lives where the loss is computed
            self.current.to(device)
            self.bounds, self._calib = self.bounds.to(device), self._calib.to(device)
            if self.duals is not None:
                self.duals.to(device)
        m = (w * dist_[:, -1]).detach()
        student = recipe.student_cond
        j = on_device(self, "forget_index", student.device)[student]
        own = (j >= 0) & (batch.role == FORGET)  # forget rows on the concept's own x_t
        self.current.update(j.clamp(min=0), m, mask=own)
        self.steps_seen += 1
        if self.duals is None:
            return
        i = on_device(self, "remap_index", device)[student]
        rows = i >= 0
        idx = i.clamp(min=0)
        m = m.to(torch.float64)
        bounds = self.bounds
        if self.steps_seen <= self.calibration_steps:
            keep = rows.to(torch.float64)
            sums = torch.zeros(self.duals.n, dtype=torch.float64, device=device).index_add_(0, idx, m * keep)
            counts = torch.zeros_like(sums).index_add_(0, idx, keep)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            calib = self._calib
            calib[0, :self.duals.n] += sums
            calib[1, :self.duals.n] += counts
            if self.steps_seen == self.calibration_steps:  # unknown bounds: bound_factor x the calibrated mean
                mean = calib[0, :self.duals.n] / calib[1, :self.duals.n].clamp(min=1)
                fresh = bounds.isnan() & (calib[1, :self.duals.n] > 0)
                self.bounds = torch.where(fresh, self.bound_factor * mean, bounds)
        known = ~bounds.isnan()
        self.duals.update(idx, m / bounds.nan_to_num(1.0)[idx], mask=rows & known[idx])

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        for j, f in enumerate(self.forget_labels):
            out[f"clacu/mapping[{f}]"] = float(self.current.estimate[j])
        if self.duals is None:
            return out
        lam, est, bounds = self.duals.lambdas.cpu(), self.duals.estimate.cpu(), self.bounds.cpu()
        for i, c in enumerate(self.group_labels):
            out[f"clacu/lambda[{c}]"] = float(lam[i])
            out[f"clacu/bound[{c}]"] = float(bounds[i])
            out[f"clacu/constraint[{c}]"] = float(est[i] * bounds[i])  # m_i, in the loss's units
        return out

    # --- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = {"current": self.current.state_dict(), "bounds": self.bounds.cpu().clone(),
                 "calib": self._calib.cpu().clone(), "steps_seen": self.steps_seen}
        if self.duals is not None:
            state["duals"] = self.duals.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.current.load_state_dict(state["current"])
        self.bounds = state["bounds"].to(torch.float64).clone()
        self._calib = state["calib"].to(torch.float64).clone()
        self.steps_seen = int(state["steps_seen"])
        if self.duals is not None:
            self.duals.load_state_dict(state["duals"])

    def is_finite(self) -> bool:
        return super().is_finite() and self.current.is_finite()
