"""Guided DDIM sampling from a conditioned model (the evaluator's and the pools' sampler)."""

from __future__ import annotations

import torch

from ..models import ConditionedModel


@torch.no_grad()
def sample(model: ConditionedModel, scheduler, cond_ids: torch.Tensor, *, steps: int = 20,
           guidance: float = 3.0, generator: torch.Generator | None = None, batch_size: int = 256,
           shape: tuple[int, ...] | None = None, progress=None) -> torch.Tensor:
    """Images for each condition id: DDIM (eta = 0) with classifier-free guidance
    ``eps_u + guidance * (eps_c - eps_u)`` (``guidance = 1``: no guidance, one forward).

    The initial noise is drawn on the CPU from ``generator`` so a seed gives the same
    samples on any device. Returns images in the model's data range, ``[N, C, H, W]``.
    """
    from diffusers import DDIMScheduler

    module = model.module
    device = next(module.parameters()).device
    dtype = next(module.parameters()).dtype
    cfg = module.config
    shape = shape or (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    was_training = module.training
    module.eval()
    out = []
    for start in range(0, len(cond_ids), batch_size):
        cond = cond_ids[start:start + batch_size].to(device)
        n = len(cond)
        x = torch.randn((n, *shape), generator=generator).to(device, dtype)
        null = torch.full_like(cond, model.null_id)
        for t in ddim.timesteps:
            tt = t.to(device).expand(n)
            if guidance == 1.0:
                eps = model.predict(x, tt, cond)
            else:
                both = model.predict(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null]))
                eps_c, eps_u = both.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            x = ddim.step(eps, t, x).prev_sample
            if progress is not None:
                progress.update(1)
        out.append(x.float().cpu())
    module.train(was_training)
    return torch.cat(out)
