"""Guided sampling from a conditioned model: DDIM for DDPM-style models, Euler for flow matching.

One module for every sampler the engine uses (ESD's partial sampling from the student),
the pools of teacher samples and the evaluator. ``Sampler(scheduler, steps, shape)`` holds the
step's host-side schedule (plain numbers: a step reads nothing from the device);
``guided(...)`` is classifier-free guidance ``pred_u + w (pred_c - pred_u)``, which is
linear in the prediction and so the same for epsilon, ``v`` and velocity models.
"""

from __future__ import annotations

import torch

from .models import ConditionedModel
from .noising import is_flow_matching


class Sampler:
    """``timesteps`` (host values, first = noisiest) and ``step(pred, i, x)``: the sample after
    step ``i``. DDPM-style: ``DDIMScheduler`` (eta 0) from the scheduler's config; flow
    matching: the Euler step of ``FlowMatchEulerDiscreteScheduler``,
    ``x + (sigma_{i+1} - sigma_i) v``, with its shift (dynamic shifting from the latent size)."""

    def __init__(self, scheduler, steps: int, shape: tuple[int, ...] | None = None):
        self.flow = is_flow_matching(scheduler)
        if self.flow:
            from diffusers import FlowMatchEulerDiscreteScheduler

            euler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
            kwargs = {}
            if euler.config.use_dynamic_shifting:
                kwargs["mu"] = _dynamic_shift(euler.config, shape)
            euler.set_timesteps(steps, **kwargs)
            self.sigmas = [float(s) for s in euler.sigmas]
            self.timesteps = [float(t) for t in euler.timesteps]
        else:
            from diffusers import DDIMScheduler

            self._ddim = DDIMScheduler.from_config(scheduler.config)
            self._ddim.set_timesteps(steps)
            self.timesteps = self._ddim.timesteps.tolist()

    def step(self, pred: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.flow:
            return x + (self.sigmas[i + 1] - self.sigmas[i]) * pred
        return self._ddim.step(pred, self.timesteps[i], x).prev_sample

    def timestep(self, i: int, n: int, device) -> torch.Tensor:
        """A batch of the ``i``-th timestep (a fill, not a host-to-device copy)."""
        if self.flow:
            return torch.full((n,), self.timesteps[i], device=device, dtype=torch.float32)
        return torch.full((n,), int(self.timesteps[i]), device=device, dtype=torch.long)


def _dynamic_shift(config, shape) -> float:
    """Flux's ``mu``: linear in the packed image sequence length, as its pipeline computes it."""
    seq = (shape[-2] // 2) * (shape[-1] // 2) if shape is not None else config.base_image_seq_len
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return seq * m + config.base_shift - m * config.base_image_seq_len


def guided(model: ConditionedModel, x, t, cond, null, guidance: float) -> torch.Tensor:
    """The guided prediction (one batched call for both branches; ``guidance = 1``: one branch)."""
    if guidance == 1.0:
        return model.predict(x, t, cond)
    both = model.predict(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
    pred_c, pred_u = both.chunk(2)
    return pred_u + guidance * (pred_c - pred_u)


@torch.no_grad()
def sample(model: ConditionedModel, scheduler, cond_ids: torch.Tensor, *, steps: int = 20,
           guidance: float | None = None, generator: torch.Generator | None = None, batch_size: int = 256,
           shape: tuple[int, ...] | None = None, progress=None) -> torch.Tensor:
    """Samples (latents for a latent model) for each condition id, ``[N, C, H, W]``, float32 on the CPU.

    The initial noise is drawn on the CPU from ``generator`` so a seed gives the same
    samples on any device; ``guidance`` defaults to the model family's
    (``model.default_guidance``).
    """
    module = model.module
    param = next(module.parameters())
    device, dtype = param.device, param.dtype
    shape = tuple(shape or model.sample_shape())
    guidance = model.default_guidance if guidance is None else float(guidance)
    sampler = Sampler(scheduler, steps, shape)
    was_training = module.training
    module.eval()
    out = []
    try:
        for start in range(0, len(cond_ids), batch_size):
            cond = cond_ids[start:start + batch_size].to(device)
            n = len(cond)
            x = torch.randn((n, *shape), generator=generator).to(device, dtype)
            null = torch.full_like(cond, model.null_id)
            for i in range(len(sampler.timesteps)):
                x = sampler.step(guided(model, x, sampler.timestep(i, n, device), cond, null, guidance), i, x)
                if progress is not None:
                    progress.update(1)
            out.append(x.float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(out)
