"""Method comparison on the embedded class model: every method, the same forgotten digit(s).

Runs each method of the engine with the same steps, batch, learning rate and seed (the
per-method constants are the demo's, ``unlearn_fast.demo.DEMO_METHOD_DEFAULTS``), evaluates
each result with the same evaluator settings, and writes a markdown table, a JSON file
and a trade-off plot (UA against retain accuracy and against Frechet distance).

    python bench/quality.py --forget 3 --out bench/results/quality
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

from unlearn_fast.config import TrainConfig
from unlearn_fast.data.mnist import load_split
from unlearn_fast.demo import DEMO_METHOD_DEFAULTS, DemoSettings
from unlearn_fast.eval.classifier import load_classifier
from unlearn_fast.eval.metrics import ClassEvaluator, EvalSettings
from unlearn_fast.eval.report import public, write_json
from unlearn_fast.models import ClassConditionalUNet
from unlearn_fast.models_zoo import CLASS_DDPM_NULL_CLASS, load_class_ddpm
from unlearn_fast.trainer import train

CONSTRAINED = {"ru", "fu", "lu"}


def plot(rows: list[dict], before: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "retain_acc", "retain accuracy"), (axes[1], "fid", "Frechet distance")):
        ax.scatter([before[key]], [before["ua"]], marker="*", s=150, c="black", label="original")
        for r in rows:
            color = "tab:blue" if r["method"] in CONSTRAINED else "tab:orange"
            ax.scatter([r[key]], [r["ua"]], c=color)
            ax.annotate(r["method"], (r[key], r["ua"]), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(label)
        ax.set_ylabel("UA (unlearning accuracy)")
        ax.grid(alpha=0.3)
    axes[0].set_title("blue: constrained (primal-dual), orange: fixed-weight")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forget", type=int, nargs="+", default=[3])
    parser.add_argument("--methods", nargs="+", default=list(DEMO_METHOD_DEFAULTS))
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--out", default="bench/results/quality")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    demo = DemoSettings()
    unet, scheduler = load_class_ddpm()
    original = ClassConditionalUNet(unet, null_class=CLASS_DDPM_NULL_CLASS)
    images, labels = load_split("heldout")
    settings = EvalSettings(per_class=args.per_class)
    evaluator = ClassEvaluator(scheduler, load_classifier(), images, labels, settings)
    before = public(evaluator.evaluate(original, args.forget))
    rows = []
    for method in args.methods:
        start = time.perf_counter()
        config = TrainConfig(method=method, forget=[str(f) for f in args.forget], max_steps=demo.steps,
                             batch_size=demo.batch_size, lr=demo.lr, seed=demo.seed, progress=False,
                             output_dir=os.path.join(args.out, "runs", method), overwrite=True,
                             **DEMO_METHOD_DEFAULTS[method])
        result = train(config)
        seconds = time.perf_counter() - start
        after = public(evaluator.evaluate(result.model, args.forget, original=original))
        rows.append({"method": method, **{k: after[k] for k in ("ua", "retain_acc", "neighbor_acc", "fid",
                                                                 "kl_to_original")}, "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    lines = [f"Forgotten digit(s): {args.forget}; {demo.steps} steps, batch {demo.batch_size}, lr {demo.lr}, "
             f"seed {demo.seed}; evaluation: {settings.per_class} samples per digit, DDIM {settings.steps} steps, "
             f"guidance {settings.guidance}, seed {settings.seed}. Method constants: unlearn_fast/demo.py.", "",
             "| method | UA | retain acc | neighbour acc | Frechet distance | KL to original (nats) | train s |",
             "|---|---|---|---|---|---|---|",
             f"| original | {before['ua']:.3f} | {before['retain_acc']:.3f} | {before['neighbor_acc']:.3f} | "
             f"{before['fid']:.2f} | 0 | |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ua']:.3f} | {r['retain_acc']:.3f} | {r['neighbor_acc']:.3f} | "
                     f"{r['fid']:.2f} | {r['kl_to_original']:.1f} | {r['seconds']} |")
    table = "\n".join(lines)
    stamp = datetime.date.today().isoformat()
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(f"# Method comparison, {stamp}\n\n```\npython {' '.join(sys.argv)}\n```\n\n{table}\n")
    write_json(os.path.join(args.out, "quality.json"), {"before": before, "methods": rows, "date": stamp})
    plot(rows, before, os.path.join(args.out, "tradeoff.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
