#!/usr/bin/env python
"""Train the two-headed shapes CNN (object + style) shipped as unlearn_fast/assets/shapes_classifier.safetensors.

Data: the fixed "train" split of unlearn_fast.data.shapes (9,600 generated images, 200 per
object-style combination); the 1,200 "heldout" images are used only for evaluation.
Augmentation: random horizontal flip and small Gaussian pixel noise (std uniform in
[0, --noise]), so that slightly noisy diffusion samples are scored like clean ones; with
--min-saturation below 1 also a random permutation of the colour channels and a random
saturation scale (uniform in [--min-saturation, 1], towards each pixel's luminance, which
keeps the object's contrast with its background), so that a style is read from the pattern
rather than from the colours. The record in *_config.json gives each head's held-out
accuracy and the style head's on the held-out images desaturated to x0.5 and x0.3. Loss:
cross-entropy of the object head plus that of the style head (label smoothing 0.05). AdamW,
linear warmup then cosine decay. Checkpoints (model + optimizer + step + RNG + elapsed time)
are written atomically every --ckpt-every steps to --ckpt and a run resumes from it
automatically (--no-resume to start over). At the end the weights go to --out (safetensors)
and the constructor arguments plus a "training" record (steps, seconds, held-out accuracy of
each head, per class) to the matching *_config.json, both atomically.

    python scripts/train_shapes_classifier.py --steps 1500 --threads 1
    python scripts/train_shapes_classifier.py --steps 1500 --threads 1 --seed 1 --channels 16,32,32 \\
        --ckpt runs/shapes_detector/ckpt.pt --out unlearn_fast/assets/shapes_detector.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _training import save_weights, train_classifier_loop  # noqa: E402  (scripts/_training.py)
from unlearn_fast.data.shapes import NUM_OBJECTS, NUM_STYLES, OBJECTS, STYLES, desaturate, load_split  # noqa: E402
from unlearn_fast.eval.shapes_classifier import SHAPES_CLASSIFIER_WEIGHTS_FILE, ShapesClassifier  # noqa: E402


def augment(x: torch.Tensor, gen: torch.Generator, noise: float, min_saturation: float = 1.0) -> torch.Tensor:
    """Random horizontal flip per image; with ``min_saturation < 1`` a random channel
    permutation and saturation scale in [min_saturation, 1]; then Gaussian noise of a random
    std in [0, noise]."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if min_saturation < 1:
        perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(len(x))])
        x = torch.gather(x, 1, perm.view(-1, 3, 1, 1).expand_as(x))
        scale = min_saturation + (1 - min_saturation) * torch.rand(len(x), generator=gen)
        x = desaturate(x, scale)
    if noise > 0:
        std = torch.rand(len(x), 1, 1, 1, generator=gen) * noise
        x = (x + std * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    return x


@torch.no_grad()
def evaluate(model, x, obj, sty, bs=500):
    """``(object_acc, style_acc, both_acc, per_object, per_style)`` on ``x``."""
    was = model.training
    model.eval()
    po, ps = model.predict(x, bs)
    model.train(was)
    ok_o, ok_s = po == obj, ps == sty
    per_o = [ok_o[obj == c].float().mean().item() for c in range(NUM_OBJECTS)]
    per_s = [ok_s[sty == c].float().mean().item() for c in range(NUM_STYLES)]
    return ok_o.float().mean().item(), ok_s.float().mean().item(), (ok_o & ok_s).float().mean().item(), per_o, per_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels", default="32,64,64", help="conv widths at 32, 16 and 8 px, comma-separated "
                                                          "(the detector: 16,32,32)")
    ap.add_argument("--feature-dim", type=int, default=128)
    ap.add_argument("--noise", type=float, default=0.1, help="max std of the Gaussian pixel noise augmentation")
    ap.add_argument("--min-saturation", type=float, default=1.0,
                    help="lowest saturation scale of the colour augmentation (1, the default and the shipped "
                         "classifiers' setting, disables it; 0.2 was tried, bench/results/shapes_ddpm)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "runs", "shapes_classifier", "ckpt.pt"))
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--out", default=SHAPES_CLASSIFIER_WEIGHTS_FILE)
    args = ap.parse_args()

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        ap.error(f"--channels: expected three comma-separated integers, got {args.channels!r}")
    if len(channels) != 3 or min(channels) < 1:
        ap.error(f"--channels: expected three positive widths, got {args.channels!r}")
    if not 0 <= args.min_saturation <= 1:
        ap.error(f"--min-saturation: expected a scale in [0, 1], got {args.min_saturation}")
    if args.steps < 1 or args.batch < 1:
        ap.error("--steps and --batch must be positive")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    t_data = time.time()
    xtr, otr, sty_tr = load_split("train")
    xte, ote, ste = load_split("heldout")
    print(f"generated {len(xtr)} train + {len(xte)} held-out images in {time.time() - t_data:.0f}s", flush=True)
    model = ShapesClassifier(channels=channels, feature_dim=args.feature_dim)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ShapesClassifier(channels={channels}, feature_dim={args.feature_dim}): {n_params} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    def loss_of(idx):
        lo, ls = model(augment(xtr[idx], gen, args.noise, args.min_saturation))
        return (F.cross_entropy(lo, otr[idx], label_smoothing=0.05)
                + F.cross_entropy(ls, sty_tr[idx], label_smoothing=0.05))

    def report(step, loss, elapsed):
        ao, as_, ab, _, _ = evaluate(model, xte, ote, ste)
        tqdm.write(f"step {step} loss {loss:.4f} heldout object {ao:.4f} style {as_:.4f} both {ab:.4f} "
                   f"({elapsed:.0f}s)")

    elapsed = train_classifier_loop(model, opt, gen, args, len(xtr), loss_of, report, "shapes_classifier")

    ao, as_, ab, per_o, per_s = evaluate(model, xte, ote, ste)
    tro, trs, _, _, _ = evaluate(model, xtr, otr, sty_tr)
    # a style is a pattern: the same held-out images with half and a third of their saturation
    desat = {f"{f:g}": round(evaluate(model, desaturate(xte, torch.full((len(xte),), f)), ote, ste)[1], 4)
             for f in (0.5, 0.3)}
    save_weights(model, args.out, {"heldout_object_acc": f"{ao:.4f}", "heldout_style_acc": f"{as_:.4f}"})
    cfg_path = os.path.splitext(args.out)[0] + "_config.json"
    cfg = dict(model.config)
    cfg["objects"], cfg["styles"] = list(OBJECTS), list(STYLES)
    cfg["training"] = dict(
        steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        schedule=args.schedule, warmup=args.warmup, noise=args.noise, min_saturation=args.min_saturation,
        heldout_style_acc_desaturated=desat, seconds=round(elapsed, 1),
        threads=args.threads, parameters=n_params,
        data="unlearn_fast.data.shapes train split (9600 images, 200 per object-style combination)",
        heldout_object_acc=round(ao, 4), heldout_style_acc=round(as_, 4), heldout_both_acc=round(ab, 4),
        train_object_acc=round(tro, 4), train_style_acc=round(trs, 4),
        heldout_per_object={o: round(a, 3) for o, a in zip(OBJECTS, per_o)},
        heldout_per_style={s: round(a, 3) for s, a in zip(STYLES, per_s)},
    )
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(cfg_path + ".tmp", cfg_path)
    os.chmod(cfg_path, 0o644)
    print(f"held-out accuracy: object {ao:.4f}, style {as_:.4f}, both {ab:.4f} (train: object {tro:.4f}, "
          f"style {trs:.4f})")
    print(f"held-out style accuracy at saturation x0.5 / x0.3: {desat['0.5']:.4f} / {desat['0.3']:.4f}")
    print("per object " + " ".join(f"{o}:{a:.3f}" for o, a in zip(OBJECTS, per_o)))
    print("per style " + " ".join(f"{s}:{a:.3f}" for s, a in zip(STYLES, per_s)))
    print(f"trained {args.steps} steps in {elapsed:.0f}s; wrote {args.out} and {cfg_path}")


if __name__ == "__main__":
    main()
