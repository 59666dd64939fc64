"""LACU: locality-aware continual unlearning (math.md section 8), the two distillation terms.

For one request of a sequence, with the previous step's frozen model ``eps_prev`` as the
teacher:

    lam_unl  E_f || eps_theta(x_t, p_f) - sg eps_prev(x_t, p_map(f)) ||^2
  + lam_pres E_r || eps_theta(x_t, r)   - sg eps_prev(x_t, r)        ||^2

Forget samples (condition ``p_f``) regress onto the previous model's prediction for the
mapping target ``p_map(f)`` chosen by locality-aware target selection (the admissible
condition nearest ``p_f`` by score distance, ``unlearn_fast.continual``); replay samples
(the retained conditions nearest the forgotten one, and optionally the conditions erased
by earlier requests) distill the previous model's own prediction. One head, one teacher
slot: the slot reads the target condition for forget samples and the sample's own
condition for replay samples, so the engine's single batched teacher call serves both.
Each term is a mean over its role's samples in the batch (``per_role_mean``).

Where the mapping must hold. Forget samples put ``x_t`` near the forgotten concept's data,
but a sampler prompted with ``p_f`` that now follows ``p_map`` walks through the target's
region, where ``eps_theta(., p_f)`` was never trained and can steer back to ``p_f``. With
``target_share > 0`` that share of the replay samples of a mapping target (a replayed
condition that some forget condition maps to) are used for the mapping term instead:
the student sees the forget condition on the target's ``x_t`` and regresses onto the same
``eps_prev(x_t, p_map)`` (so the teacher slot, and the teacher call, are unchanged). The
mapping term is then the mean over forget samples and these samples, the replay term the
mean over the remaining replay samples. ``target_share = 0`` is the plain loss above.

Away from the forgotten concept. With ``eta > 0`` the mapping target moves away from the
forgotten concept, as ESD/RU targets do (here around ``p_map`` instead of the null
condition): ``eps_prev(x_t, p_map) - eta (eps_prev(x_t, p_f) - eps_prev(x_t, p_map))``.
Samples that are a blend of the two concepts are then pushed to the target's side. This
needs a second teacher slot (``eps_prev(x_t, p_f)``, read for mapping samples only);
``eta = 0`` is the plain LACU term with one slot.

Keeping earlier erasures. A condition erased by an earlier request is replayed, and plain
replay distils the previous model's prediction for it, including whatever of the erased
concept is left (a few samples that still look like it), which later requests can
amplify. With ``remapped`` (the earlier erased conditions) and ``remapped_targets`` (their
mapping targets), replay samples of these conditions train the mapping term instead
(toward ``eps_prev(x_t, p_map)``, with the same push-away), so each request re-asserts
the earlier erasures on what the previous model generates for them.

The third LACU term, ``lam_reg ||theta - theta_prev||^2``, acts on the parameters, not on
noise predictions: it is the trainer's ``TrainConfig.l2_anchor``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .base import FORGET, NOISE, RETAIN, Batch, Method, Recipe, check_all, constant, on_device, per_role_mean, role_rows


class LocalityAwareContinualUnlearning(Method):
    """Args:
        forget: condition ids erased by this request.
        num_conditions: number of condition ids of the model.
        targets: the mapping target ``p_map`` of each forget condition (same order).
        lam_unl: weight of the mapping (unlearning) term.
        lam_pres: weight of the replay (preservation) term.
        target_share: share of a mapping target's replay samples used for the mapping term
            (see the module docstring; 0: none).
        eta: push-away weight of the mapping target (see the module docstring; 0: plain LACU).
        remapped: conditions erased by earlier requests whose replay samples train the mapping
            term (see the module docstring); ``remapped_targets``: their mapping targets.
    """

    name = "lacu"
    condition_args = ("targets", "remapped", "remapped_targets")

    # targets/remapped/remapped_targets: condition ids; in TrainConfig.method_kwargs also
    # condition names (class names or prompts), which the trainer resolves (condition_args)
    def __init__(self, forget: Sequence[int], *, num_conditions: int, targets: list[Union[int, str]],
                 lam_unl: float = 1.0, lam_pres: float = 1.0, target_share: float = 0.0, eta: float = 0.0,
                 remapped: Sequence[Union[int, str]] = (), remapped_targets: Sequence[Union[int, str]] = ()):
        forget = [int(f) for f in forget]
        targets = [int(t) for t in targets]
        remapped = [int(c) for c in remapped]
        remapped_targets = [int(t) for t in remapped_targets]
        if len(remapped_targets) != len(remapped):
            raise ValueError(f"remapped_targets: expected one mapping target per remapped condition ({len(remapped)}), "
                             f"got {len(remapped_targets)}")
        if set(remapped) & set(forget):
            raise ValueError(f"remapped: {sorted(set(remapped) & set(forget))} are also being erased now (forget)")
        for t in targets + remapped_targets:
            if t in remapped:
                raise ValueError(f"targets: the mapping target {t} was erased earlier (remapped {remapped})")
        if not forget:
            raise ValueError("forget: expected at least one condition to erase, got none")
        if len(targets) != len(forget):
            raise ValueError(f"targets: expected one mapping target per forget condition ({len(forget)}), "
                             f"got {len(targets)}")
        for t in targets:
            if not 0 <= t < num_conditions:
                raise ValueError(f"targets: {t} is not a condition id in [0, {num_conditions})")
            if t in forget:
                raise ValueError(f"targets: the mapping target {t} is itself being erased ({forget})")
        if lam_unl < 0 or lam_pres < 0:
            raise ValueError(f"lam_unl/lam_pres: expected weights >= 0, got {lam_unl}, {lam_pres}")
        if not 0.0 <= target_share <= 1.0:
            raise ValueError(f"target_share: expected a share in [0, 1], got {target_share}")
        if eta < 0:
            raise ValueError(f"eta: expected a weight >= 0, got {eta}")
        self.eta = float(eta)
        self.forget = forget
        self.targets = targets
        self.lam_unl = float(lam_unl)
        self.lam_pres = float(lam_pres)
        for t in remapped_targets:
            if not 0 <= t < num_conditions or t in forget:
                raise ValueError(f"remapped_targets: {t} is not an admissible condition id in [0, {num_conditions})")
        self.remapped = remapped
        self.remapped_targets = remapped_targets
        self.map_of = torch.full((num_conditions,), -1, dtype=torch.long)  # forget or remapped -> its target
        self.map_of[torch.tensor(forget + remapped)] = torch.tensor(targets + remapped_targets)
        self.target_share = float(target_share)
        self.source_of = torch.full((num_conditions,), -1, dtype=torch.long)  # target -> (first) forget condition
        for f, t in reversed(list(zip(forget, targets))):
            self.source_of[t] = f

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        forget = batch.role == FORGET
        target = on_device(self, "map_of", batch.cond.device)[batch.cond]
        check_all(~(forget & (target < 0)), "batch: a forget sample's condition is not one of the method's forget conditions")
        mapping = target >= 0  # forget samples, and replay samples of remapped conditions
        slot = torch.where(mapping, target, batch.cond)
        student = batch.cond
        if self.target_share > 0:
            source = on_device(self, "source_of", batch.cond.device)[batch.cond]
            on_target = ~forget & (source >= 0)
            classes = torch.arange(len(self.source_of), device=batch.cond.device)
            per_class = (batch.cond[:, None] == classes).long() * on_target[:, None]  # one-hot, no value checks
            rank = per_class.cumsum(0).gather(1, batch.cond[:, None]).squeeze(1)  # 1, 2, ... within each target
            take = torch.floor(rank * self.target_share) != torch.floor((rank - 1) * self.target_share)
            cross = on_target & take
            student = torch.where(cross, source, batch.cond)  # the forget condition, on the target's x_t
            mapping = mapping | cross
        role = torch.where(mapping, torch.full_like(batch.role, FORGET), torch.full_like(batch.role, RETAIN))
        weights = per_role_mean(torch.where(mapping, self.mapping_weight(student, w), self.lam_pres * w), role)
        if self.eta == 0:
            coeffs = constant([[1.0, -1.0]], w.device, w.dtype).expand(len(batch), 1, 2)
            return Recipe(student, slot[:, None], coeffs, weights[:, None], role_rows(batch, "all"))
        # slot 2: eps_prev(x_t, p_f) for mapping samples (the student's condition), the noise otherwise (unread)
        slot2 = torch.where(mapping, student, torch.full_like(student, NOISE))
        a = torch.where(mapping, torch.full_like(w, self.eta), torch.zeros_like(w))
        coeffs = torch.stack([torch.ones_like(w), -(1 + a), a], -1)[:, None]  # r = eps_theta - target
        # slot 2's rows depend on the mapping (replay samples too), not on the role alone: every row
        return Recipe(student, torch.stack([slot, slot2], 1), coeffs, weights[:, None], role_rows(batch, "all", "all"))

    def mapping_weight(self, student: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of a mapping row (student condition ``student``): ``lam_unl * w``."""
        return self.lam_unl * w

    def metrics(self) -> dict[str, float]:
        return {f"lacu/target[{f}]": float(t) for f, t in zip(self.forget + self.remapped,
                                                                self.targets + self.remapped_targets)}
