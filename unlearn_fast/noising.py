"""How training noises clean samples, per scheduler kind: timesteps, ``x_t`` and the regression target.

``noising_for(scheduler)`` gives a DDPM-style ``DDPMNoising`` (``x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps``; the target is ``eps``, ``v`` or ``x_0`` by the scheduler's
``prediction_type``) or a ``FlowNoising`` (``x_t = (1 - sigma) x_0 + sigma eps``, target the
velocity ``eps - x_0``; docs/math.md section 10). A timestep is the model's own (an integer
for DDPM, ``sigma * num_train_timesteps`` for flow matching) and ``weight_index(t)`` maps it
to a row of ``schedules.timestep_weights``. Everything a step needs is made once per device:
drawing, noising and indexing do not read the device from the host.
"""

from __future__ import annotations

import math

import torch

DENSITIES = ("uniform", "logit_normal", "mode")


def is_flow_matching(scheduler) -> bool:
    return "FlowMatch" in type(scheduler).__name__


def noising_for(scheduler, t_range: tuple[int, int] | None = None, *, density: str = "uniform",
                logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29):
    """The noising of ``scheduler``; ``density`` and its parameters apply to flow matching
    (diffusers' ``compute_density_for_timestep_sampling``); DDPM timesteps are uniform."""
    if density not in DENSITIES:
        raise ValueError(f"timestep_sampling: expected one of {DENSITIES}, got {density!r}")
    if is_flow_matching(scheduler):
        return FlowNoising(scheduler, t_range, density=density, logit_mean=logit_mean, logit_std=logit_std,
                           mode_scale=mode_scale)
    return DDPMNoising(scheduler, t_range)


class DDPMNoising:
    flow = False

    def __init__(self, scheduler, t_range=None):
        self.scheduler = scheduler
        self.T = int(scheduler.config.num_train_timesteps)
        self.t_range = tuple(t_range) if t_range else (0, self.T)
        if not 0 <= self.t_range[0] < self.t_range[1] <= self.T:
            raise ValueError(f"t_range: expected 0 <= low < high <= {self.T}, got {self.t_range}")
        self.prediction_type = getattr(scheduler.config, "prediction_type", None) or "epsilon"
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler.config.prediction_type: expected epsilon, v_prediction or sample, "
                             f"got {self.prediction_type!r}")

    def draw(self, n: int, device, generator=None) -> torch.Tensor:
        return torch.randint(*self.t_range, (n,), device=device, generator=generator)

    def add_noise(self, x0, noise, t):
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0, noise, t):
        """What the model regresses on at ``x_t``: ``eps``, ``v`` or ``x_0``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return x0

    def weight_index(self, t):
        return t

    def model_timestep(self, value, n: int, device) -> torch.Tensor:
        """A batch of ``n`` copies of the host timestep ``value`` (a fill, not a copy)."""
        return torch.full((n,), int(value), device=device, dtype=torch.long)


class FlowNoising:
    flow = True

    def __init__(self, scheduler, t_range=None, *, density="uniform", logit_mean=0.0, logit_std=1.0,
                 mode_scale=1.29):
        self.scheduler = scheduler
        self.T = int(scheduler.config.num_train_timesteps)
        self.density, self.logit_mean, self.logit_std, self.mode_scale = density, logit_mean, logit_std, mode_scale
        timesteps = scheduler.timesteps.float()  # the training table (descending, shifted unless dynamic)
        if len(timesteps) != self.T:
            timesteps = type(scheduler).from_config(scheduler.config).timesteps.float()  # set_timesteps was called
        self.timesteps = timesteps
        self.first, self.count = 0, len(timesteps)
        if t_range:
            low, high = t_range
            inside = ((timesteps >= low) & (timesteps < high)).nonzero().squeeze(1)
            if inside.numel() == 0:
                raise ValueError(f"t_range: no training timestep of this flow-matching scheduler lies in {list(t_range)}")
            self.first, self.count = int(inside.min()), int(inside.max()) - int(inside.min()) + 1
        self._on_device: dict = {}

    def _u(self, n, device, generator):
        if self.density == "logit_normal":
            return torch.sigmoid(torch.randn((n,), device=device, generator=generator) * self.logit_std
                                 + self.logit_mean)
        u = torch.rand((n,), device=device, generator=generator)
        if self.density == "mode":
            u = 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        return u

    def draw(self, n: int, device, generator=None) -> torch.Tensor:
        """Timesteps as diffusers' flow-matching scripts draw them: ``u`` from the density,
        then the scheduler's (shifted) training timestep at index ``u * T``."""
        table = self._on_device.get(torch.device(device))
        if table is None:
            table = self._on_device.setdefault(torch.device(device), self.timesteps.to(device))
        idx = (self._u(n, device, generator) * self.count).long().clamp_(0, self.count - 1) + self.first
        return table[idx]

    def _sigma(self, t, x):
        return (t.to(x.dtype) / self.T).view(-1, *([1] * (x.dim() - 1)))

    def add_noise(self, x0, noise, t):
        sigma = self._sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def target(self, x0, noise, t):
        return noise - x0

    def weight_index(self, t):
        return t.floor().long().clamp_(0, self.T - 1)

    def model_timestep(self, value, n: int, device) -> torch.Tensor:
        return torch.full((n,), float(value), device=device, dtype=torch.float32)
