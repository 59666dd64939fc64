"""Helpers shared by the training scripts of the embedded models (class DDPM, text DDPM,
classifier): the learning-rate schedule, atomic checkpoint writes and the EMA update."""

from __future__ import annotations

import math
import os

import torch


def lr_at(step, total, base, warmup, schedule, min_ratio=0.1, time_progress=None):
    """Linear warmup, then constant or cosine (to ``min_ratio * base``). The cosine's progress
    is the step fraction, or ``time_progress`` (fraction of a wall-time budget) when that is
    further along, so a run cut by its time budget still anneals."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if time_progress is not None:
        p = max(p, min(1.0, time_progress))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def atomic_save(obj, path):
    """``torch.save`` to ``path.tmp``, then rename: a crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def ema_update(ema, model, decay):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def optimizer_step(model, ema, opt, loss, lr, step, grad_clip, ema_decay):
    """One step at ``lr``: backward, grad-norm clip (``grad_clip > 0``), update, then the EMA
    with the usual warmup decay ``min(ema_decay, (1 + n) / (10 + n))``. Returns the new step."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    step += 1
    ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
    return step
