#!/usr/bin/env python
"""Quality check of the class-conditional DDPM: sample N images per class with DDIM and
classifier-free guidance, classify them with the shipped classifier, and print per-class and
mean accuracy (fraction classified as their conditioning class) plus the sampling time.

Quality floor for the shipped model: mean accuracy >= 0.90.

    python scripts/sample_check.py --n-per-class 20 --steps 20 --guidance 1.5 --threads 2

The shipped model is small (0.7 M parameters): use guidance 1.0-1.5. Guidance >= 2 makes the
samples over-inked (extra strokes) and class accuracy drops (see unlearn_fast/assets/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unlearn_fast.data import NULL_CLASS, NUM_CLASSES  # noqa: E402
from unlearn_fast.eval.classifier import load_classifier  # noqa: E402
from unlearn_fast.models_zoo import load_class_ddpm  # noqa: E402


@torch.no_grad()
def ddim_sample_cfg(unet, scheduler, labels, steps=20, guidance=1.5, eta=0.0, generator=None, batch_size=500):
    """DDIM samples (N, C, H, W) in [-1, 1] for ``labels`` with classifier-free guidance.

    eps = eps(x, t, null) + guidance * (eps(x, t, c) - eps(x, t, null)); guidance=1 is plain
    conditional sampling (one forward per step), guidance=0 unconditional.
    """
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    cfg = unet.config
    out = []
    for i in range(0, len(labels), batch_size):
        c = labels[i : i + batch_size]
        n = len(c)
        x = torch.randn((n, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator)
        null = torch.full_like(c, NULL_CLASS)
        for t in ddim.timesteps:
            tt = torch.full((n,), int(t), dtype=torch.long)
            if guidance == 1.0:
                eps = unet(x, tt, class_labels=c).sample
            elif guidance == 0.0:
                eps = unet(x, tt, class_labels=null).sample
            else:
                e = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([c, null])).sample
                e_c, e_u = e.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            x = ddim.step(eps, t, x, eta=eta, generator=generator).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500, help="images per sampling batch (x2 with guidance)")
    ap.add_argument("--model-dir", default=None, help="save_pretrained folder (default: the shipped one)")
    ap.add_argument("--save-grid", default=None, help="optional PNG path for a grid of the samples (rows = classes)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    unet, scheduler = load_class_ddpm(args.model_dir)
    clf = load_classifier()
    labels = torch.arange(NUM_CLASSES).repeat_interleave(args.n_per_class)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    x = ddim_sample_cfg(unet, scheduler, labels, args.steps, args.guidance, args.eta, gen, args.batch)
    dt = time.time() - t0
    pred = clf.predict(x)
    per = [(pred[labels == c] == c).float().mean().item() for c in range(NUM_CLASSES)]
    acc = (pred == labels).float().mean().item()
    print(f"model: {args.model_dir or 'shipped class_ddpm'}; sampler: DDIM eta={args.eta}, {args.steps} steps, "
          f"guidance {args.guidance}, {args.n_per_class} per class, seed {args.seed}, {args.threads} threads")
    print("per-class accuracy: " + " ".join(f"{c}:{a:.2f}" for c, a in enumerate(per)))
    print(f"mean accuracy {acc:.4f} ({int((pred == labels).sum())}/{len(labels)}); floor 0.90: {'PASS' if acc >= 0.9 else 'FAIL'}")
    print(f"sampling time {dt:.1f}s ({dt / len(labels) * 1000:.1f} ms/image)")

    if args.save_grid:
        from PIL import Image

        n = args.n_per_class
        imgs = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0]
        h, w = imgs.shape[-2:]
        grid = imgs.view(NUM_CLASSES, n, h, w).permute(0, 2, 1, 3).reshape(NUM_CLASSES * h, n * w)
        Image.fromarray(grid.numpy()).resize((n * w * 2, NUM_CLASSES * h * 2), Image.NEAREST).save(args.save_grid)
        print(f"wrote {args.save_grid}")


if __name__ == "__main__":
    main()
