"""One unlearning step, whatever the method: the embedding API.

``UnlearningObjective(model, scheduler, method).loss(batch)`` returns ``(loss, metrics)``
so a user's own loop (or a Lightning module) runs any method without our trainer:

    objective = UnlearningObjective(model, scheduler, method)
    for batch in loader:
        loss, metrics = objective.loss(batch)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

Data flow of a step (design.md): ``x_t`` from the batch (forward-noised) or from partial
sampling of the student; ONE batched no-grad teacher call for every slot of every head;
one student call; one fused loss; the method's dual update from the same pass's
per-sample distances (so the duals cost no extra forward).
"""

from __future__ import annotations

import contextlib

import torch

from .methods.base import NOISE, Batch, Method, Recipe
from .models import ConditionedModel
from .ops import fused_eps_loss
from .schedules import timestep_weights

SOURCES = ("data", "student")


class UnlearningObjective:
    """Args:
        model: the adapter over the trainable network (``models.ConditionedModel``).
        scheduler: the diffusers noise scheduler the model was trained with.
        method: a ``methods.Method``.
        teacher: the frozen adapter (default: ``model.teacher()``, a frozen copy, or the
            same network with LoRA adapters disabled).
        weighting: the timestep weighting (``schedules.timestep_weights``); ``kl``/``elbo``
            are multiplied by T, the one-sample estimate of the whole chain.
        snr_gamma: gamma of the ``min_snr`` weighting.
        reduction: the fused op's per-sample reduction (``"sum"`` gives nats with ``kl``).
        source: ``"data"`` (forward-noised ``batch.x0``) or ``"student"`` (ESD: the student
            samples from noise, without gradient, down to a random step); default: the method's.
        t_range: timesteps drawn uniformly from ``[t_range[0], t_range[1])``.
        sampler_steps: DDIM steps of the student's partial sampling.
        teacher_dtype: dtype of the teacher's forward (e.g. ``torch.bfloat16`` on a GPU).
        guidance_scale: classifier-free guidance of the student's partial sampling.
        update_duals: set False to freeze the duals (e.g. for evaluation).
    """

    def __init__(self, model: ConditionedModel, scheduler, method: Method, *, teacher: ConditionedModel | None = None,
                 weighting: str = "simple", snr_gamma: float | None = None, reduction: str = "mean",
                 source: str | None = None,
                 t_range: tuple[int, int] | None = None, sampler_steps: int = 20, teacher_dtype=None,
                 guidance_scale: float = 3.0, backend: str = "auto", update_duals: bool = True):
        source = source or method.default_source
        if source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
        T = scheduler.config.num_train_timesteps
        t_range = t_range or (0, T)
        if not 0 <= t_range[0] < t_range[1] <= T:
            raise ValueError(f"t_range: expected 0 <= low < high <= {T}, got {t_range}")
        self.model = model
        self.teacher = teacher if teacher is not None else model.teacher()
        self.scheduler = scheduler
        self.method = method
        self.source = source
        self.t_range = t_range
        self.sampler_steps = sampler_steps
        self.teacher_dtype = teacher_dtype
        self.guidance_scale = guidance_scale
        self.backend = backend
        self.reduction = reduction
        self.update_duals = update_duals
        scale = T if weighting in ("kl", "elbo") else 1
        self.weight_table = timestep_weights(scheduler, weighting, snr_gamma=snr_gamma) * scale

    # --- x_t -------------------------------------------------------------------------

    def _noised(self, batch: Batch, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = batch.x0
        t = torch.randint(*self.t_range, (len(batch),), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.scheduler.add_noise(x0, noise, t), t, noise

    @torch.no_grad()
    def _from_student(self, batch: Batch, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ESD's x_t: the student samples (DDIM, guided) from noise down to a random step."""
        from diffusers import DDIMScheduler

        ddim = DDIMScheduler.from_config(self.scheduler.config)
        ddim.set_timesteps(self.sampler_steps)
        x0 = batch.x0
        # host int: loop length; drawn on the generator's device (a CUDA generator cannot draw on the CPU)
        gen_device = generator.device if generator is not None else "cpu"
        stop = int(torch.randint(1, self.sampler_steps, (1,), generator=generator, device=gen_device))
        x = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        null = torch.full_like(batch.cond, self.model.null_id)
        was_training = self.model.module.training
        self.model.module.eval()
        for t in ddim.timesteps[:stop]:
            tt = t.expand(len(batch)).to(x0.device)
            eps = self.model.predict(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([batch.cond, null]))
            cond, uncond = eps.chunk(2)
            x = ddim.step(uncond + self.guidance_scale * (cond - uncond), t, x).prev_sample
        self.model.module.train(was_training)
        t = ddim.timesteps[stop].expand(len(batch)).to(x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return x, t, noise

    # --- teacher -------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_slots(self, x_t, t, noise, recipe: Recipe) -> list[torch.Tensor]:
        """One batched teacher call for every (sample, slot) that needs a prediction."""
        conds = recipe.teacher_conds  # [B, S]
        B, S = conds.shape
        need = conds != NOISE  # [B, S]
        flat = need.T.reshape(-1)  # slot-major: slot s of all samples, then slot s+1
        idx = flat.nonzero().squeeze(1)
        sample = idx % B
        full = noise.new_zeros((S * B, *x_t.shape[1:]))
        if idx.numel():  # methods whose slots all read the noise need no teacher
            ctx = torch.autocast(x_t.device.type, dtype=self.teacher_dtype) if self.teacher_dtype else contextlib.nullcontext()
            with ctx:
                out = self.teacher.predict(x_t[sample], t[sample], conds.T.reshape(-1)[idx])
            full[idx] = out.to(x_t.dtype)
        slots = []
        for s in range(S):
            pred_s = full[s * B:(s + 1) * B]
            mask = need[:, s].view(B, *([1] * (x_t.dim() - 1)))
            slots.append(torch.where(mask, pred_s, noise))
        return slots

    # --- the step --------------------------------------------------------------------------

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """The step's loss (differentiable w.r.t. the student) and its metrics (tensors)."""
        if len(batch) == 0:
            raise ValueError("batch: empty batch")
        if self.source == "data":
            x_t, t, noise = self._noised(batch, generator)
        else:
            x_t, t, noise = self._from_student(batch, generator)
        w = self.weight_table.to(x_t.device)[t]
        recipe = self.method.recipe(batch, w)
        slots = self.teacher_slots(x_t, t, noise, recipe)
        pred = self.model.predict(x_t, t, recipe.student_cond)
        if pred.dtype != x_t.dtype:
            slots = [s.to(pred.dtype) for s in slots]
        refine = getattr(self.method, "refine", None)
        if refine is not None:
            recipe = refine(recipe, pred, slots, w, self.reduction, self.backend)
        loss, dist = fused_eps_loss(pred, slots, recipe.coeffs, recipe.weights, reduction=self.reduction,
                                    backend=self.backend)
        if self.update_duals and torch.is_grad_enabled():
            self.method.update(batch, recipe, dist, w)
        metrics = {"loss": loss.detach(), "dist": dist.mean(0)}
        return loss, metrics
