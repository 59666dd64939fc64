"""One unlearning step, whatever the method: the embedding API.

``UnlearningObjective(model, scheduler, method).loss(batch)`` returns ``(loss, metrics)``
so a user's own loop (or a Lightning module) runs any method without our trainer:

    objective = UnlearningObjective(model, scheduler, method)
    for batch in loader:
        loss, metrics = objective.loss(batch)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

Data flow of a step (docs/design.md): ``x_t`` from the batch (forward-noised) or from partial
sampling of the student; ONE batched no-grad teacher call for every slot of every head;
one student call; one fused loss; the method's dual update from the same pass's
per-sample distances (so the duals cost no extra forward).
"""

from __future__ import annotations

import contextlib

import torch

from .methods.base import NOISE, Batch, Method, Recipe, check_all, host_side
from .models import ConditionedModel
from .noising import noising_for
from .ops import fused_eps_loss
from .sampling import Sampler, guided
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
        t_range: timesteps drawn from ``[t_range[0], t_range[1])`` (uniformly for DDPM-style
            schedulers; by ``noising``'s density for flow matching).
        noising: how clean samples are noised and what the true target is
            (``noising.noising_for(scheduler, t_range)`` by default: epsilon, v or velocity).
        sampler_steps: DDIM steps of the student's partial sampling.
        teacher_dtype: dtype of the teacher's forward (e.g. ``torch.bfloat16`` on a GPU).
        guidance_scale: classifier-free guidance of the student's partial sampling.
        update_duals: set False to freeze the duals (e.g. for evaluation).
    """

    def __init__(self, model: ConditionedModel, scheduler, method: Method, *, teacher: ConditionedModel | None = None,
                 weighting: str = "simple", snr_gamma: float | None = None, reduction: str = "mean",
                 source: str | None = None,
                 t_range: tuple[int, int] | None = None, sampler_steps: int = 20, teacher_dtype=None,
                 guidance_scale: float = 3.0, backend: str = "auto", update_duals: bool = True, noising=None):
        source = source or method.default_source
        if source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
        T = scheduler.config.num_train_timesteps
        self.noising = noising if noising is not None else noising_for(scheduler, t_range)
        self.model = model
        self.teacher = teacher if teacher is not None else model.teacher()
        self.scheduler = scheduler
        self.method = method
        self.source = source
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
        """``(x_t, t, target)``: ``batch.x0`` noised at drawn timesteps, and the true target there."""
        x0 = batch.x0
        t = self.noising.draw(len(batch), x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.noising.add_noise(x0, noise, t), t, self.noising.target(x0, noise, t)

    def _sampler(self, shape) -> Sampler:
        """The student's sampler, made once (its schedule is host numbers)."""
        if getattr(self, "_sampler_cache", None) is None:
            self._sampler_cache = Sampler(self.scheduler, self.sampler_steps, tuple(shape))
        return self._sampler_cache

    @torch.no_grad()
    def _from_student(self, batch: Batch, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ESD's x_t: the student samples (guided) from noise down to a random step. The
        third value stands where the true target would be; no method reads it on this path."""
        x0 = batch.x0
        sampler = self._sampler(x0.shape[1:])
        # The loop length is a host int: drawn from a CPU generator (a CPU `generator`, else
        # torch's default one, which the trainer checkpoints), never read back from a GPU.
        host_gen = generator if generator is not None and generator.device.type == "cpu" else None
        with host_side():
            stop = int(torch.randint(1, self.sampler_steps, (1,), generator=host_gen))
        x = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        null = torch.full_like(batch.cond, self.model.null_id)
        was_training = self.model.module.training
        self.model.module.eval()
        for i in range(stop):
            pred = guided(self.model, x, sampler.timestep(i, len(batch), x0.device), batch.cond, null,
                          self.guidance_scale)
            x = sampler.step(pred, i, x)
        self.model.module.train(was_training)
        t = sampler.timestep(stop, len(batch), x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return x, t, noise

    # --- teacher -------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_slots(self, x_t, t, target, recipe: Recipe) -> list[torch.Tensor]:
        """One batched teacher call for every (sample, slot) that needs a prediction; ``NOISE``
        slots read ``target``, the true target at ``x_t`` (the noise for an epsilon model)."""
        conds = recipe.teacher_conds  # [B, S]
        B, S = conds.shape
        need = conds != NOISE  # [B, S]
        if recipe.teacher_rows is None:
            rows, full = self._teacher_by_mask(x_t, t, target, conds, need)
        else:
            rows, full = self._teacher_by_rows(x_t, t, conds, need, recipe.teacher_rows)
        slots = []
        for s in range(S):
            start, stop = rows[s]
            mask = need[start:stop, s].view(-1, *([1] * (x_t.dim() - 1)))
            inside = torch.where(mask, full[s], target[start:stop]) if stop > start else target[:0]
            slots.append(inside if (start, stop) == (0, B) else torch.cat([target[:start], inside, target[stop:]]))
        return slots

    def _teacher(self, x, t, cond) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=self.teacher_dtype) if self.teacher_dtype else contextlib.nullcontext()
        with ctx:
            return self.teacher.predict(x, t, cond)

    def _teacher_by_rows(self, x_t, t, conds, need, teacher_rows):
        """The teacher's batch from host-known row ranges: slicing only, no host sync."""
        B, S = conds.shape
        if len(teacher_rows) != S or any(not 0 <= a <= b <= B for a, b in teacher_rows):
            raise ValueError(f"recipe.teacher_rows: expected {S} ranges (start, stop) within [0, {B}], "
                             f"got {teacher_rows}")
        row = torch.arange(B, device=conds.device)
        outside = torch.stack([(row < a) | (row >= b) for a, b in teacher_rows], 1)
        check_all(~(need & outside), "recipe.teacher_rows: a row outside its slot's range reads the teacher")
        live = [(s, slice(a, b)) for s, (a, b) in enumerate(teacher_rows) if b > a]
        full = [None] * S
        if live:
            # NOISE rows inside a range get a valid condition (the model's null); their output is discarded
            cond = conds.masked_fill(~need, self.teacher.null_id)
            out = self._teacher(torch.cat([x_t[r] for _, r in live]), torch.cat([t[r] for _, r in live]),
                                torch.cat([cond[r, s] for s, r in live]))
            for (s, _), o in zip(live, out.to(x_t.dtype).split([r.stop - r.start for _, r in live])):
                full[s] = o
        return list(teacher_rows), full

    def _teacher_by_mask(self, x_t, t, target, conds, need):
        """Without host-known rows: gather the needed (sample, slot) pairs by ``nonzero``
        (a host synchronisation on a GPU)."""
        B, S = conds.shape
        flat = need.T.reshape(-1)  # slot-major: slot s of all samples, then slot s+1
        idx = flat.nonzero().squeeze(1)
        sample = idx % B
        full = target.new_zeros((S * B, *x_t.shape[1:]))
        if idx.numel():  # methods whose slots all read the true target need no teacher
            full[idx] = self._teacher(x_t[sample], t[sample], conds.T.reshape(-1)[idx]).to(x_t.dtype)
        return [(0, B)] * S, list(full.split(B))

    # --- the step --------------------------------------------------------------------------

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """The step's loss (differentiable w.r.t. the student) and its metrics (tensors)."""
        if len(batch) == 0:
            raise ValueError("batch: empty batch")
        if self.source == "data":
            x_t, t, target = self._noised(batch, generator)
        else:
            x_t, t, target = self._from_student(batch, generator)
        w = self.weight_table.to(x_t.device)[self.noising.weight_index(t)]  # .to: a no-op once moved
        student = self.method.prepare_step(self, batch, generator)
        recipe = self.method.recipe(batch, w)
        slots = self.teacher_slots(x_t, t, target, recipe)
        pred = student.predict(x_t, t, recipe.student_cond)
        if pred.dtype != x_t.dtype:
            slots = [s.to(pred.dtype) for s in slots]
        refine = getattr(self.method, "refine", None)
        if refine is not None:
            recipe = refine(recipe, pred, slots, w, self.reduction, self.backend)
        loss, dist = fused_eps_loss(pred, slots, recipe.coeffs, recipe.weights, reduction=self.reduction,
                                    backend=self.backend)
        if self.update_duals and torch.is_grad_enabled():
            self.method.update(batch, recipe, dist, w, t)
        metrics = {"loss": loss.detach(), "dist": dist.mean(0)}
        return loss, metrics
