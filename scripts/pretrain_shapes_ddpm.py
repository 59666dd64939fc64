#!/usr/bin/env python
"""Pretrain the embedded text-conditioned DDPM of the shapes benchmark (unlearn_fast/assets/shapes_ddpm/).

Model: diffusers UNet2DConditionModel with unlearn_fast.shapes_zoo.build_shapes_unet_config()
(RGB 32x32; 32/64/64 channels; cross-attention transformer blocks at 16x16, 8x8 and in the mid
block), reading the last hidden states of a tiny transformers CLIPTextModel
(build_shapes_text_config(): 2 layers, 2 heads, hidden 64, 16 positions) that trains jointly
with the UNet from scratch; the tokenizer is the offline byte-level BPE CLIPTokenizer of
build_shapes_tokenizer() (every word of shapes.SHAPES_WORDS one token). DDPMScheduler with
build_shapes_scheduler_config() (1000 steps, squaredcos_cap_v2, epsilon).

Data: the fixed "train" split of unlearn_fast.data.shapes (9,600 images, 200 per object-style
combination, [-1, 1]). Each image gets a training prompt of one of three kinds: with
probability 1 - --p-object - --p-style one naming its object and style ("a striped star",
TRAIN_COMBO_TEMPLATES), with --p-object one naming its object only ("a star": the style is then
whatever the image has, i.e. uniform), with --p-style its style only ("something striped");
the template is uniform within the kind. The held-out paraphrases (HELDOUT_*_TEMPLATES) are
never used. Condition dropout: the prompt is replaced by "" with probability --p-uncond, so
eps(x, t, "") is the unconditional prediction (classifier-free guidance). The distinct prompts
of each batch are encoded every step, so the text encoder gets gradients for all of them.

AdamW, linear warmup then constant or cosine lr; EMA of the weights of both networks (the EMA
weights are what is exported). The cosine anneals by steps (--steps), or by wall time when
that is further along: --time-budget-minutes T anneals over T minutes of training in total,
across resumed chunks (the same command can be rerun until the budget or --steps is reached;
the run then stops), --anneal-by-time over this chunk's --max-minutes (as
pretrain_text_ddpm.py). Every --ckpt-every steps a full checkpoint (model, EMA, optimizer,
step, RNG, elapsed time) is written atomically to --ckpt, and every --export-every steps the
EMA model is exported to --out as a pipeline-style folder (unet/, text_encoder/, tokenizer/,
scheduler/, train_info.json), file by file with os.replace, loadable with
unlearn_fast.shapes_zoo.load_shapes_ddpm. A run resumes from --ckpt automatically
(--no-resume to start over); --steps can be raised on resume. --max-minutes stops cleanly
(checkpoint + export) after that much wall time.

    nohup setsid python scripts/pretrain_shapes_ddpm.py --steps 8000 --time-budget-minutes 210 \\
        --max-minutes 150 --threads 1 >> runs/shapes_ddpm/log.txt 2>&1 &

Quality check of an exported folder (DDIM eta 0, canonical prompts "a {style} {object}" or the
held-out paraphrases, scored by the shipped shapes evaluator; per object, per style, both):

    python scripts/pretrain_shapes_ddpm.py --quality-check --n-per-combo 10 --check-steps 20 --guidance 2.0
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
    TextDDPM, add_ddpm_arguments, batch_indices, export_text_ddpm, init_text_ddpm_from, lr_at, noised,
    optimizer_step, resume_training_state, save_training_state,
)
from unlearn_fast.data.shapes import (  # noqa: E402
    HELDOUT_COMBO_TEMPLATES,
    NUM_OBJECTS,
    NUM_STYLES,
    OBJECTS,
    SHAPES_IMAGE_SIZE,
    STYLES,
    TRAIN_COMBO_TEMPLATES,
    TRAIN_OBJECT_TEMPLATES,
    TRAIN_STYLE_TEMPLATES,
    heldout_prompt,
    load_split,
    prompt,
)
from unlearn_fast.schedules import timestep_weights  # noqa: E402
from unlearn_fast.shapes_zoo import (  # noqa: E402
    SHAPES_DDPM_DIR,
    build_shapes_scheduler_config,
    build_shapes_text_config,
    build_shapes_tokenizer,
    build_shapes_unet_config,
)


def prompt_ids_table():
    """Training prompts and the id tables ``combo[o, s, k]``, ``obj[o, k]``, ``sty[s, k]``; "" is last."""
    prompts, index = [], {}

    def add(text):
        if text not in index:
            index[text] = len(prompts)
            prompts.append(text)
        return index[text]

    combo = torch.tensor([[[add(prompt(o, s, k)) for k in range(len(TRAIN_COMBO_TEMPLATES))] for s in STYLES]
                          for o in OBJECTS])
    obj = torch.tensor([[add(prompt(o, None, k)) for k in range(len(TRAIN_OBJECT_TEMPLATES))] for o in OBJECTS])
    sty = torch.tensor([[add(prompt(None, s, k)) for k in range(len(TRAIN_STYLE_TEMPLATES))] for s in STYLES])
    null_id = add("")
    return prompts, combo, obj, sty, null_id


def draw_prompt_ids(o, s, tables, p_object, p_style, p_uncond, gen):
    """One training prompt id per image of object ids ``o`` and style ids ``s`` (see the module docstring)."""
    _, combo, obj, sty, null_id = tables
    n = len(o)
    kind = torch.rand(n, generator=gen)
    ids = combo[o, s, torch.randint(0, combo.shape[2], (n,), generator=gen)]
    only_obj = kind < p_object
    only_sty = (kind >= p_object) & (kind < p_object + p_style)
    ids = torch.where(only_obj, obj[o, torch.randint(0, obj.shape[1], (n,), generator=gen)], ids)
    ids = torch.where(only_sty, sty[s, torch.randint(0, sty.shape[1], (n,), generator=gen)], ids)
    ids[torch.rand(n, generator=gen) < p_uncond] = null_id
    return ids


def quality_check(args):
    """Sample --n-per-combo images per object-style combination and score object and style."""
    from unlearn_fast.sampling import sample
    from unlearn_fast.eval.shapes_classifier import load_shapes_classifier
    from unlearn_fast.shapes_zoo import load_shapes_ddpm

    combos = [(o, s) for o in range(NUM_OBJECTS) for s in range(NUM_STYLES)]
    if args.check_prompts == "canonical":
        templates = [0]
        make = prompt
    else:
        templates = list(range(len(HELDOUT_COMBO_TEMPLATES)))
        make = heldout_prompt
    # image i of a combination uses template i % len(templates)
    texts = [make(o, s, templates[i % len(templates)]) for o, s in combos for i in range(args.n_per_combo)]
    adapter, scheduler = load_shapes_ddpm(args.out, prompts=sorted(set(texts)) + [""])
    clf = load_shapes_classifier(args.classifier) if args.classifier else load_shapes_classifier()
    cond = torch.tensor([adapter.condition_id(p) for p in texts])
    obj = torch.tensor([o for o, _ in combos]).repeat_interleave(args.n_per_combo)
    sty = torch.tensor([s for _, s in combos]).repeat_interleave(args.n_per_combo)
    info_path = os.path.join(args.out, "train_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    print(f"model: {args.out} (step {info.get('steps')}, {info.get('seconds')}s of training); "
          f"{args.check_prompts} prompts ('{texts[0]}' ...); DDIM eta=0, {args.check_steps} steps, "
          f"{args.n_per_combo} per combination ({len(texts)} samples), seed {args.seed}", flush=True)
    results = {}
    for w in args.guidance:
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        x = sample(adapter, scheduler, cond, steps=args.check_steps, guidance=w, generator=g,
                   batch_size=240).clamp(-1, 1)
        dt = time.time() - t0
        po, ps = clf.predict(x)
        ok_o, ok_s = po == obj, ps == sty
        both = (ok_o & ok_s).float().mean().item()
        per_o = [ok_o[obj == c].float().mean().item() for c in range(NUM_OBJECTS)]
        per_s = [ok_s[sty == c].float().mean().item() for c in range(NUM_STYLES)]
        per_ob = [(ok_o & ok_s)[obj == c].float().mean().item() for c in range(NUM_OBJECTS)]
        per_sb = [(ok_o & ok_s)[sty == c].float().mean().item() for c in range(NUM_STYLES)]
        results[w] = dict(both=both, object=ok_o.float().mean().item(), style=ok_s.float().mean().item(),
                          per_object=dict(zip(OBJECTS, per_o)), per_style=dict(zip(STYLES, per_s)),
                          per_object_both=dict(zip(OBJECTS, per_ob)), per_style_both=dict(zip(STYLES, per_sb)))
        print(f"guidance {w}: object accuracy per object " + " ".join(f"{n}:{a:.2f}" for n, a in zip(OBJECTS, per_o)))
        print(f"guidance {w}: style accuracy per style " + " ".join(f"{n}:{a:.2f}" for n, a in zip(STYLES, per_s)))
        print(f"guidance {w}: both right, per object " + " ".join(f"{n}:{a:.2f}" for n, a in zip(OBJECTS, per_ob)))
        print(f"guidance {w}: both right, per style " + " ".join(f"{n}:{a:.2f}" for n, a in zip(STYLES, per_sb)))
        print(f"guidance {w}: object {results[w]['object']:.4f}, style {results[w]['style']:.4f}, both "
              f"{both:.4f} ({int((ok_o & ok_s).sum())}/{len(texts)}); floor 0.90 (both): "
              f"{'PASS' if both >= 0.9 else 'FAIL'}; sampling {dt:.1f}s", flush=True)
        if args.save_grid:
            from PIL import Image

            n, size = args.n_per_combo, SHAPES_IMAGE_SIZE
            imgs = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            # rows: objects; columns: styles, n samples each
            grid = imgs.view(NUM_OBJECTS, NUM_STYLES, n, 3, size, size).permute(0, 4, 1, 2, 5, 3)
            grid = grid.reshape(NUM_OBJECTS * size, NUM_STYLES * n * size, 3)
            root, ext = os.path.splitext(args.save_grid)
            path = f"{root}_g{w}{ext or '.png'}"
            Image.fromarray(grid.numpy()).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
            print(f"wrote {path} (rows: {', '.join(OBJECTS)}; column groups: {', '.join(STYLES)})")
    if args.check_json:
        with open(args.check_json, "w") as f:
            json.dump(dict(model=args.out, train_info=info, prompts=args.check_prompts, steps=args.check_steps,
                           n_per_combo=args.n_per_combo, seed=args.seed,
                           results={str(k): v for k, v in results.items()}), f, indent=2)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ddpm_arguments(ap, steps=8000, lr=1e-3, schedule="cosine",
                       ckpt=os.path.join(ROOT, "runs", "shapes_ddpm", "ckpt.pt"), out=SHAPES_DDPM_DIR)
    ap.add_argument("--p-object", type=float, default=0.2, help="share of prompts naming only the object")
    ap.add_argument("--p-style", type=float, default=0.2, help="share of prompts naming only the style")
    ap.add_argument("--time-budget-minutes", type=float, default=0.0,
                    help="total training minutes over all resumed chunks: the cosine also anneals by this "
                         "budget, and the run stops when it is spent (0: no budget)")
    ap.add_argument("--anneal-by-time", action="store_true",
                    help="with --max-minutes and a cosine schedule, anneal by this chunk's time budget when it "
                         "is the tighter limit (as pretrain_text_ddpm.py)")
    ap.add_argument("--init-from", default=None,
                    help="warm start a new run (no checkpoint yet) from the EMA weights of an exported folder "
                         "(a copy, not --out, which the run overwrites); its steps and seconds count in "
                         "train_info.json")
    ap.add_argument("--min-snr-gamma", type=float, default=0.0,
                    help="weight each sample's epsilon MSE by min(SNR, gamma) / SNR (Hang et al. 2023; "
                         "0: the plain MSE)")
    # quality check mode
    ap.add_argument("--quality-check", "--check", dest="check", action="store_true",
                    help="only run the quality check of --out and exit")
    ap.add_argument("--n-per-combo", type=int, default=10)
    ap.add_argument("--check-steps", type=int, default=20, help="DDIM steps of the quality check")
    ap.add_argument("--check-prompts", choices=["canonical", "heldout"], default="canonical",
                    help="'a {style} {object}', or the held-out paraphrases (cycled over the samples)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    ap.add_argument("--classifier", default=None, help="scoring classifier weights (default: the shipped evaluator)")
    ap.add_argument("--save-grid", default=None, help="PNG path prefix for sample grids")
    ap.add_argument("--check-json", default=None, help="write the check's results to this JSON file")
    args = ap.parse_args()

    for name in ("p_object", "p_style", "p_uncond"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')}: expected a probability in [0, 1], got {getattr(args, name)}")
    if args.p_object + args.p_style > 1.0:
        ap.error(f"--p-object + --p-style: expected at most 1, got {args.p_object + args.p_style}")
    if args.min_snr_gamma < 0:
        ap.error(f"--min-snr-gamma: expected gamma >= 0 (0: off), got {args.min_snr_gamma}")
    if args.init_from and os.path.abspath(args.init_from) == os.path.abspath(args.out):
        ap.error("--init-from: expected a copy of the exported folder, not --out itself (the run overwrites --out)")
    if args.n_per_combo < 1:
        ap.error(f"--n-per-combo: expected a positive count, got {args.n_per_combo}")

    torch.set_num_threads(args.threads)
    if args.check:
        quality_check(args)
        return
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    t_data = time.time()
    x_train, o_train, s_train = load_split("train")
    print(f"generated the train split ({len(x_train)} images) in {time.time() - t_data:.0f}s", flush=True)
    tokenizer = build_shapes_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**build_shapes_text_config(tokenizer)))
    unet = UNet2DConditionModel(**build_shapes_unet_config(SHAPES_IMAGE_SIZE, text_encoder.config.hidden_size))
    model = TextDDPM(unet, text_encoder)
    scheduler = DDPMScheduler(**build_shapes_scheduler_config())
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    tables = prompt_ids_table()
    prompts = tables[0]
    input_ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids

    step, elapsed, loss_avg = 0, 0.0, None
    resuming = not args.no_resume and os.path.exists(args.ckpt)
    init_info = {}
    if args.init_from:
        init_info = init_text_ddpm_from(args.init_from, model, ema)  # overwritten below when resuming
    if resuming:
        step, elapsed, loss_avg = resume_training_state(args.ckpt, model, ema, opt, gen)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"UNet2DConditionModel: {n_unet / 1e6:.3f} M parameters; CLIPTextModel: {n_text / 1e6:.3f} M "
          f"(vocab {len(tokenizer)}, max length {tokenizer.model_max_length}); {len(prompts)} prompts; "
          f"{len(x_train)} training images at {SHAPES_IMAGE_SIZE}x{SHAPES_IMAGE_SIZE}", flush=True)

    alphas_cumprod = scheduler.alphas_cumprod.float()
    sample_weight = (timestep_weights(scheduler, "min_snr", snr_gamma=args.min_snr_gamma)
                     if args.min_snr_gamma > 0 else None)
    budget_s = args.time_budget_minutes * 60

    def info():
        d = dict(
            steps=step, seconds=round(elapsed, 1), batch=args.batch, lr=args.lr, schedule=args.schedule,
            warmup=args.warmup, target_steps=args.steps, time_budget_minutes=args.time_budget_minutes,
            anneal_by_time=args.anneal_by_time, ema_decay=args.ema_decay, p_uncond=args.p_uncond,
            p_object=args.p_object, p_style=args.p_style, seed=args.seed, threads=args.threads,
            loss_ema=None if loss_avg is None else round(loss_avg, 5),
            data="unlearn_fast.data.shapes train split (9600 images, 200 per object-style combination), "
                 "32x32 RGB, [-1, 1]",
            prompts="shapes.TRAIN_COMBO/OBJECT/STYLE_TEMPLATES (kind by p_object / p_style, template uniform)",
            null_prompt="", unet_params=n_unet, text_encoder_params=n_text,
            weights="EMA (UNet and text encoder trained jointly from scratch)",
            min_snr_gamma=args.min_snr_gamma or None,
        )
        if init_info:
            prior_steps = init_info.get("total_steps", init_info.get("steps")) or 0
            prior_seconds = init_info.get("total_seconds", init_info.get("seconds")) or 0.0
            d.update(init_from=dict(steps=init_info.get("steps"), seconds=init_info.get("seconds"),
                                    lr=init_info.get("lr"), min_snr_gamma=init_info.get("min_snr_gamma")),
                     total_steps=step + prior_steps, total_seconds=round(elapsed + prior_seconds, 1),
                     weights="EMA (UNet and text encoder trained jointly from scratch, then warm-started "
                             "from init_from's EMA weights)")
        return d

    def checkpoint():
        save_training_state(args.ckpt, model, ema, opt, gen, step, elapsed, loss_avg, args)

    if budget_s > 0 and elapsed >= budget_s:
        print(f"time budget of {args.time_budget_minutes} min already spent ({elapsed:.0f}s at step {step}); "
              f"nothing to do", flush=True)
        return
    batches = batch_indices(len(x_train), args.batch, gen)
    model.train()
    t_start = time.time()
    t0 = t_start - elapsed
    p0 = min(1.0, max(0, step - args.warmup) / max(1, args.steps - args.warmup))
    pbar = tqdm(total=args.steps, initial=step, desc="shapes_ddpm", mininterval=60, file=sys.stdout)
    stop = False
    while step < args.steps and not stop:
        idx = next(batches)
        x0 = x_train[idx]
        prompt_ids = draw_prompt_ids(o_train[idx], s_train[idx], tables, args.p_object, args.p_style,
                                     args.p_uncond, gen)
        t, noise, xt = noised(x0, alphas_cumprod, gen)

        time_progress = None
        if step >= args.warmup:
            if budget_s > 0:
                time_progress = elapsed / budget_s
            if args.anneal_by_time and args.max_minutes > 0:
                chunk = p0 + (1 - p0) * (time.time() - t_start) / (args.max_minutes * 60)
                time_progress = chunk if time_progress is None else max(time_progress, chunk)
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.schedule, time_progress=time_progress)
        pred = model(xt, t, input_ids, prompt_ids)
        if sample_weight is None:
            loss = F.mse_loss(pred, noise)
        else:
            loss = (sample_weight[t] * (pred - noise).square().mean(dim=(1, 2, 3))).mean()
        step = optimizer_step(model, ema, opt, loss, lr, step, args.grad_clip, args.ema_decay)
        loss_avg = loss.item() if loss_avg is None else 0.99 * loss_avg + 0.01 * loss.item()
        elapsed = time.time() - t0
        pbar.update(1)
        if step % 25 == 0:
            pbar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}", refresh=False)
        if args.max_minutes > 0 and time.time() - t_start > args.max_minutes * 60:
            tqdm.write(f"--max-minutes {args.max_minutes} reached at step {step}")
            stop = True
        if budget_s > 0 and elapsed >= budget_s:
            tqdm.write(f"--time-budget-minutes {args.time_budget_minutes} spent at step {step}")
            stop = True
        if step % args.ckpt_every == 0 or step == args.steps or stop:
            checkpoint()
        if step % args.export_every == 0 or step == args.steps or stop:
            export_text_ddpm(ema, tokenizer, scheduler, args.out, info())
            tqdm.write(f"step {step} loss_ema {loss_avg:.4f} lr {lr:.1e} elapsed {elapsed:.0f}s "
                       f"({elapsed / max(1, step):.2f} s/step overall) -> exported EMA to {args.out}")
            sys.stdout.flush()
    pbar.close()
    print(f"done: {step} steps in {elapsed:.0f}s; EMA weights in {args.out}", flush=True)


if __name__ == "__main__":
    main()
