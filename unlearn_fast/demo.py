"""The one-command demo: unlearn a digit from the embedded class-conditional DDPM.

Loads the shipped model and classifier (no download), evaluates the model, unlearns the
requested classes with the chosen method through the trainer, evaluates again, prints a
before/after table, and writes a JSON report and a PNG grid (one row per class:
samples before | the same seeds after).

    unlearn-fast demo --forget 3 --method ru --report demo.json --out demo_out
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.mnist import load_split
from .eval.classifier import load_classifier
from .eval.metrics import ClassEvaluator, EvalSettings
from .eval.report import public, save_grid, table, write_json
from .models import ClassConditionalUNet
from .models_zoo import CLASS_DDPM_NULL_CLASS, load_class_ddpm
from .trainer import train

#: Per-method settings of the demo, tuned on the embedded model (see README).
DEMO_METHOD_DEFAULTS = {
    "ru": dict(method_kwargs=dict(bound=0.05, dual_lr=2.0, init_lambda=0.4, retain_weight=3.0)),
    "esd": dict(method_kwargs=dict(eta=1.0, retain_weight=3.0), source="data"),
    "lu": dict(method_kwargs=dict(bound=0.5, init_lambda=1.0, retain_weight=3.0)),
    "fu": dict(method_kwargs=dict(bound=0.15, lambda_max=0.3, init_lambda=0.1)),
    "ablation": dict(method_kwargs=dict(retain_weight=3.0)),
    "neggrad": dict(method_kwargs=dict(alpha=0.1)),
    "finetune": dict(),
}


@dataclass
class DemoSettings:
    forget: list[int] = field(default_factory=lambda: [3])
    method: str = "ru"
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    seed: int = 0
    out: str = "demo_out"
    report: str | None = None
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(per_class=50))
    threads: int | None = None


def run_demo(settings: DemoSettings) -> dict:
    """Run the demo; returns the report (also written to ``settings.report``)."""
    if settings.method not in DEMO_METHOD_DEFAULTS:
        raise ValueError(f"method: expected one of {sorted(DEMO_METHOD_DEFAULTS)}, got {settings.method!r}")
    bad = [f for f in settings.forget if not 0 <= f <= 9]
    if not settings.forget or bad:
        raise ValueError(f"forget: expected digits 0-9, got {settings.forget}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    os.makedirs(settings.out, exist_ok=True)
    report_path = settings.report or os.path.join(settings.out, "report.json")

    unet, scheduler = load_class_ddpm()
    original = ClassConditionalUNet(unet, null_class=CLASS_DDPM_NULL_CLASS)
    images, labels = load_split("heldout")
    evaluator = ClassEvaluator(scheduler, load_classifier(), images, labels, settings.eval)
    s = settings.eval
    n_steps = -(-10 * s.per_class // 256) * s.steps  # sampler calls per evaluation

    with tqdm(total=n_steps, desc="evaluate before", unit="step") as bar:
        before = evaluator.evaluate(original, settings.forget, progress=bar)

    config = TrainConfig(
        method=settings.method, forget=[str(f) for f in settings.forget], max_steps=settings.steps,
        batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
        output_dir=os.path.join(settings.out, "run"), overwrite=True, checkpoint_every=0,
        **DEMO_METHOD_DEFAULTS[settings.method],
    )
    train_start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - train_start

    with tqdm(total=n_steps, desc="evaluate after", unit="step") as bar:
        after = evaluator.evaluate(result.model, settings.forget, original=original, progress=bar)

    save_grid(os.path.join(settings.out, "grid.png"), before["samples"], after["samples"],
              torch.arange(10).repeat_interleave(s.per_class))
    report = {
        "method": settings.method,
        "forget": settings.forget,
        "before": public(before),
        "after": public(after),
        "steps": settings.steps,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": {
            "model": "embedded class-conditional DDPM, 16x16 MNIST (unlearn_fast/assets/class_ddpm)",
            "train": {k: v for k, v in vars(config).items() if k in (
                "method", "method_kwargs", "max_steps", "batch_size", "lr", "seed", "weighting", "source")},
            "eval": evaluator.settings_dict(),
            "threads": torch.get_num_threads(),
        },
        "model_dir": result.final_dir,
        "grid": os.path.join(settings.out, "grid.png"),
    }
    write_json(report_path, report)
    print(f"\nunlearned digit(s) {settings.forget} with {settings.method} in {settings.steps} steps "
          f"({train_seconds:.0f} s training, {report['seconds']:.0f} s in all)\n")
    print(table(before, after))
    print(f"\nreport: {report_path}\ngrid:   {report['grid']}\nmodel:  {result.final_dir}")
    return report
