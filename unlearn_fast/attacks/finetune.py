"""The fine-tuning attacks: a few steps of plain denoising training on the unlearned model.

- ``relearn``: ``k`` images of the concept, under the concept's condition, for ``steps`` steps
  (the relearning evaluation: how fast does an erased concept come back?);
- ``resurgence``: ``k`` images of the *retained* concepts only, each under its own condition
  ("concept resurgence": does unrelated fine-tuning revive the erased concept?).

AdamW at the model's pretraining learning rate (the embedded models' ``train_info.json``)
unless ``lr`` is given; the ASR of the concept's condition is read every ``asr_every`` steps.
"""

from __future__ import annotations

import copy
import json
import os

import torch
import torch.nn.functional as F

from .context import AttackContext
from .embedding import noisy_batch

#: each embedded model's pretraining script's learning rate, when its train_info.json is absent
_FALLBACK_LR = 1e-3


def pretraining_lr(kind: str) -> float:
    """The learning rate the embedded ``kind`` model was pretrained with (its ``train_info.json``)."""
    from ..asset_files import ASSETS_DIR

    path = os.path.join(ASSETS_DIR, f"{kind}_ddpm", "train_info.json")
    try:
        with open(path) as f:
            return float(json.load(f)["lr"])
    except (OSError, ValueError, KeyError):
        return _FALLBACK_LR


def _finetune(ctx: AttackContext, images: torch.Tensor, cond_ids: torch.Tensor, progress) -> dict:
    s = ctx.settings
    model = copy.copy(ctx.model)
    model.module = copy.deepcopy(ctx.model.module).train().requires_grad_(True)
    device = next(model.module.parameters()).device
    lr = s.lr if s.lr is not None else pretraining_lr(s.model)
    opt = torch.optim.AdamW(model.module.parameters(), lr=lr)
    gen = ctx.generator()
    per_step, curve = [], []

    def read(step):
        if step == 0 and ctx.before is not None:
            asr, samples = ctx.before  # the unattacked model's: the runner has read it
        else:
            model.module.eval()
            asr, samples = ctx.asr(model, ctx.concept_id)
            model.module.train()
        per_step.append({"step": step, "asr": round(asr, 4)})
        return samples

    samples = read(0)
    for step in range(1, s.attack_steps + 1):
        x_t, t, target, idx = noisy_batch(ctx, images, gen)
        pred = model.predict(x_t.to(device), t.to(device), cond_ids[idx].to(device))
        loss = F.mse_loss(pred, target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append({"step": step, "loss": round(float(loss.detach()), 5)})
        if step % s.asr_every == 0 or step == s.attack_steps:
            samples = read(step)
        if progress is not None:
            progress.update(1)
    model.module.eval().requires_grad_(False)
    return {"model": model, "cond_id": ctx.concept_id, "curve": curve, "per_step_asr": per_step, "samples": samples,
            "asr": per_step[-1]["asr"], "kept_step": s.attack_steps,
            "budget": {"steps": s.attack_steps, "k": len(images), "images_per_step": min(s.batch_size, len(images)),
                       "lr": lr, "seed": s.seed}}


def relearn_attack(ctx: AttackContext, progress=None) -> dict:
    images = ctx.target.images(ctx.settings.k)
    return _finetune(ctx, images, torch.full((len(images),), ctx.concept_id, dtype=torch.long), progress)


def resurgence_attack(ctx: AttackContext, progress=None) -> dict:
    k = ctx.settings.k
    pool = ctx.target.retained_pool
    if k > len(pool):
        raise ValueError(f"k: expected at most {len(pool)} retained images, got {k}")
    names = ctx.target.retained_conditions[:k]
    ids = _condition_ids(ctx.model, names)
    return _finetune(ctx, pool[:k], torch.tensor(ids, dtype=torch.long), progress)


def _condition_ids(model, names) -> list[int]:
    if hasattr(model, "add_prompts"):
        return model.add_prompts(names)
    return [model.condition_id(n) for n in names]
