"""A divergence constraint in nats: the whole reverse chain's KL, its heaviest timesteps probed every step, the rest from the step's own draws.

The chain's KL between two noise predictors is ``sum_t w_t * ||eps_1 - eps_2||^2`` (``w_t``
the ``kl`` weights, the squared norm summed over the sample's elements; docs/math.md
sections 2 and 9). A uniform timestep draw estimates it without bias as ``R * w_t * d_t``
(``R`` timesteps in the trained range), but the weights span six orders of magnitude: on
the capped cosine schedule the last step holds 97% of them and the first few a harmonic
tail, so a handful of rare draws carry most of the sum and a running mean of single draws
swings by more than its own size. Here the ``probe`` heaviest timesteps of the range are
evaluated every step instead, one forget row each (the student and the frozen teacher
without gradient: ``2 * probe`` extra rows of forward passes), and the draws of the step
cover the others:

    g_i ~= sum_{h in probe} w_h * d_i(h)  +  R * w_t * d(t) * [t not in probe]

with ``d_i(h)`` the last probed distance of concept ``i`` at ``h`` (0 before its first
probe: the student starts as the teacher). Every term is a distance the method already
defines (its constraint head), so the bound reads in nats whatever weighting trains the
primal.
"""

from __future__ import annotations

import torch

from ..schedules import timestep_weights
from .base import FORGET, Batch


class NatsConstraint:
    """Per-concept probe state and the per-sample estimate in nats.

    Args:
        n: number of concepts (one row of probe state each).
        probe: how many of the heaviest timesteps are probed every step.
    """

    def __init__(self, n: int, probe: int = 4):
        if probe < 0:
            raise ValueError(f"nats_probe: expected a number of timesteps >= 0, got {probe}")
        self.n, self.k = n, int(probe)
        self.last = torch.zeros(n, self.k, dtype=torch.float64)  # d_i(h), the last probe of each
        self.step = 0
        self.timesteps: list[int] | None = None  # host ints, set by bind

    def bind(self, objective) -> None:
        """Reads the schedule, the trained range and the reduction once (the first step)."""
        noising = objective.noising
        if getattr(noising, "flow", True) or not hasattr(noising, "t_range"):
            raise ValueError("bound_units: 'nats' needs a DDPM-family scheduler (discrete timesteps with kl "
                             "weights); this objective noises by flow matching")
        lo, hi = noising.t_range
        w = timestep_weights(objective.scheduler, "kl").double()
        k = min(self.k, hi - lo)
        top = torch.topk(w[lo:hi], k).indices + lo
        self.timesteps = sorted(int(t) for t in top)
        self.probe_w = w[self.timesteps].clone()
        uniform = torch.zeros_like(w)
        uniform[lo:hi] = (hi - lo) * w[lo:hi]
        uniform[self.timesteps] = 0.0  # their share comes from the probe
        self.uniform = uniform
        self.mean_reduction = objective.reduction == "mean"
        self.scale = 1.0  # nats per unit of the head's distance: the element count under "mean" (probe)
        self.last = self.last[:, :k].contiguous()

    def _on(self, device) -> None:
        if self.last.device != device:
            self.last, self.probe_w, self.uniform = (x.to(device) for x in (self.last, self.probe_w, self.uniform))

    @torch.no_grad()
    def probe(self, objective, batch: Batch, concept_of: torch.Tensor, generator=None) -> None:
        """One forget row per probed timestep: ``d = ||student - teacher||^2`` at the row's own
        condition, kept as its concept's latest value there. Rows are host-chosen (cycling
        through the batch's forget rows), so the probe needs no host synchronisation."""
        if self.timesteps is None:
            self.bind(objective)
        k = len(self.timesteps)
        device = batch.x0.device
        self._on(device)
        self.scale = float(batch.x0[0].numel()) if self.mean_reduction else 1.0
        n_forget = batch.n_forget if batch.n_forget is not None else len(batch)
        if k == 0 or n_forget == 0:
            return
        rows = [(self.step * k + i) % n_forget for i in range(k)]
        self.step += 1
        x0 = torch.cat([batch.x0[r:r + 1] for r in rows])
        cond = torch.cat([batch.cond[r:r + 1] for r in rows])
        forget = torch.cat([batch.role[r:r + 1] for r in rows]) == FORGET  # all True when n_forget is known
        t = torch.cat([objective.noising.model_timestep(h, 1, device) for h in self.timesteps])
        noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
        x_t = objective.noising.add_noise(x0, noise, t)
        student = objective.model.predict(x_t, t, cond)
        teacher = objective._teacher(x_t, t, cond).to(student.dtype)
        d = (student - teacher).double().square().flatten(1).sum(1)
        concept = concept_of[cond].clamp(min=0)
        flat = self.last.view(-1)
        idx = concept * k + torch.arange(k, device=device)
        new = torch.where(forget, d, flat[idx])
        flat.index_copy_(0, idx, new)

    def values(self, dist: torch.Tensor, t: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
        """Per-sample estimate of concept ``concept[j]``'s chain KL in nats, from the constraint
        head's distance ``dist[j]`` (in the objective's reduction) at the sample's ``t[j]``
        (after this step's ``probe``)."""
        self._on(dist.device)
        drawn = self.uniform[t] * dist.double() * self.scale
        return drawn + (self.last[concept] * self.probe_w).sum(1)

    def state_dict(self) -> dict:
        return {"last": self.last.cpu().clone(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        last = state["last"]
        if last.shape[0] != self.n:
            raise ValueError(f"state['nats']['last']: expected {self.n} concepts, got {tuple(last.shape)}")
        self.last = last.to(torch.float64).clone()
        self.step = int(state["step"])
