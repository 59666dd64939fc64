"""The conditioning attacks: a free embedding of the concept's condition, optimised to bring the concept back.

- ``embedding`` (the UnlearnDiffAtk family): each step draws ``batch_size`` samples with the
  free conditioning through a differentiable ``sampler_steps``-step DDIM sampler (guidance
  included) and descends the *detector*'s cross-entropy of the concept on them.
- ``inversion`` (textual inversion, classifier-free): descends the denoising loss of the free
  conditioning on ``k`` images of the concept (``x_t`` of random ``t`` and noise).

Both start from the concept's own conditioning (``AttackedModel``) with Adam; the model's
weights stay frozen. The evaluator reads ASR every ``asr_every`` steps (the curve); with
``keep = "best"`` the attack reports the read step the *detector* scores highest on samples of
the attack's own seed (the trajectory is not monotone: a later step can lose what an earlier
one found), with ``"last"`` the final step. The reported ASR is the evaluator's at that step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling import Sampler, guided
from .conditioning import AttackedModel
from .context import AttackContext


#: Adam's step on the free conditioning (the embedded class model's class-embedding rows have
#: norm ~11; docs/attacks.md says what it recovers)
EMBEDDING_LR = 0.1


def _attacked(ctx: AttackContext) -> AttackedModel:
    ctx.model.module.eval().requires_grad_(False)
    return AttackedModel(ctx.model, ctx.concept_id, ctx.init_id)


def _optimise(ctx: AttackContext, attacked: AttackedModel, loss_of_step, steps: int, progress) -> dict:
    """Adam on the free conditioning; the evaluator's ASR of it at step 0, every ``asr_every``
    steps and at the end (``per_step_asr``), and the kept step (``settings.keep``): its ASR,
    samples and embedding (left in ``attacked``)."""
    s = ctx.settings
    opt = torch.optim.Adam([attacked.embedding], lr=s.lr if s.lr is not None else EMBEDDING_LR)
    curve, per_step = [], []
    kept = {}

    def read(step):
        with torch.no_grad():
            if step == 0 and ctx.init_id is None and ctx.before is not None:
                asr, samples = ctx.before  # the unattacked concept's: the runner has read it
            else:
                asr, samples = ctx.asr(attacked, attacked.attack_id)
            point = {"step": step, "asr": round(asr, 4)}
            if s.keep == "best":
                point["detector_asr"] = round(ctx.detector_asr(attacked, attacked.attack_id), 4)
        per_step.append(point)
        if s.keep == "last" or not kept or point["detector_asr"] > kept["detector_asr"]:  # ties: the earlier
            kept.update(point, samples=samples, embedding=attacked.embedding.detach().clone())

    read(0)
    for step in range(1, steps + 1):
        loss = loss_of_step(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append({"step": step, "loss": round(float(loss.detach()), 5)})
        if step % s.asr_every == 0 or step == steps:
            read(step)
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        attacked.embedding.copy_(kept["embedding"])
    return {"model": attacked, "cond_id": attacked.attack_id, "curve": curve, "per_step_asr": per_step,
            "samples": kept["samples"], "asr": kept["asr"], "kept_step": kept["step"]}


def embedding_attack(ctx: AttackContext, progress=None) -> dict:
    s = ctx.settings
    attacked = _attacked(ctx)
    device = attacked.embedding.device
    shape = attacked.sample_shape()
    sampler = Sampler(ctx.scheduler, s.sampler_steps, shape)
    gen = ctx.generator()
    cond = torch.full((s.batch_size,), attacked.attack_id, dtype=torch.long, device=device)
    null = torch.full_like(cond, attacked.null_id)

    def loss_of_step(_step):
        x = torch.randn((s.batch_size, *shape), generator=gen).to(device)
        for i in range(len(sampler.timesteps)):
            x = sampler.step(guided(attacked, x, sampler.timestep(i, len(x), device), cond, null, ctx.guidance), i, x)
        return ctx.target.detector_loss(ctx.detector, x.clamp(-1, 1))

    return {**_optimise(ctx, attacked, loss_of_step, s.attack_steps, progress),
            "budget": {"steps": s.attack_steps, "samples_per_step": s.batch_size, "sampler_steps": s.sampler_steps,
                       "guidance": ctx.guidance, "lr": s.lr or EMBEDDING_LR, "seed": s.seed, "guided_by": "detector",
                       "keep": s.keep}}


def denoising_target(scheduler, x0, noise, t):
    """The network's training target at ``x_t``: the noise, or the velocity for v-prediction."""
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"model: the fine-tuning and inversion attacks read epsilon or v-prediction DDPM models, "
                     f"got prediction_type {kind!r}")


def noisy_batch(ctx: AttackContext, images: torch.Tensor, gen: torch.Generator):
    """``(x_t, t, target)`` of a random batch of ``images`` (uniform ``t``, Gaussian noise)."""
    s = ctx.settings
    idx = torch.randint(len(images), (min(s.batch_size, len(images)),), generator=gen)
    x0 = ctx.model.to_latents(images[idx])
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(int(ctx.scheduler.config.num_train_timesteps), (len(x0),), generator=gen)
    return ctx.scheduler.add_noise(x0, noise, t), t, denoising_target(ctx.scheduler, x0, noise, t), idx


def inversion_attack(ctx: AttackContext, progress=None) -> dict:
    s = ctx.settings
    attacked = _attacked(ctx)
    device = attacked.embedding.device
    images = ctx.target.images(s.k)
    gen = ctx.generator()

    def loss_of_step(_step):
        x_t, t, target, _ = noisy_batch(ctx, images, gen)
        cond = torch.full((len(x_t),), attacked.attack_id, dtype=torch.long, device=device)
        return F.mse_loss(attacked.predict(x_t.to(device), t.to(device), cond), target.to(device))

    return {**_optimise(ctx, attacked, loss_of_step, s.attack_steps, progress),
            "budget": {"steps": s.attack_steps, "k": s.k, "images_per_step": min(s.batch_size, s.k),
                       "lr": s.lr or EMBEDDING_LR, "seed": s.seed, "guided_by": "denoising loss (no classifier)",
                       "keep": s.keep}}
