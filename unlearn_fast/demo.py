"""The one-command demo: unlearn a digit from an embedded DDPM.

Loads the shipped model and classifier (no download), evaluates the model, unlearns the
requested classes with the chosen method through the trainer, evaluates again, prints a
before/after table, and writes a JSON report and a PNG grid (one row per class:
samples before | the same seeds after).

    unlearn-fast demo --forget 3 --method ru --report demo.json --out demo_out
    unlearn-fast demo --model text --forget 7     # erase the prompt "a handwritten digit seven"

``--model class`` (default) unlearns classes of the class-conditional DDPM from the
MNIST train split; ``--model text`` erases the canonical prompt of each digit
(``models_zoo.digit_prompt``) from the text-conditioned DDPM, training on a pool of the
frozen model's own samples (prompt models have no data), and the evaluator samples each
digit from its canonical prompt.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .eval.metrics import ClassEvaluator, EvalSettings, embedded_evaluator
from .eval.report import public, save_grid, table, write_json
from .models_zoo import DIGIT_PROMPT_TEMPLATES, digit_prompt, embedded_condition_names, load_embedded
from .training import train

DEMO_MODELS = ("class", "text", "shapes")
#: the text demo's training pool: samples of the frozen model, ``DemoSettings.pool_size`` per
#: prompt, DDIM 20 steps, guidance 1.5 (where the text model samples best; assets/README.md)
TEXT_POOL = dict(data="pool", pool_steps=20, pool_guidance=1.5)

#: Per-method settings of the demo, tuned on the embedded model (see README).
DEMO_METHOD_DEFAULTS = {
    # lambda_max 0.75 (alpha = lambda / (1 - lambda) <= 3), retain_weight 10, 200 steps: the setting
    # that passes issue 4's acceptance for every digit (bench/results/acceptance/class/tuning.md).
    # Uncapped, the duals reach ~0.9 (alpha ~ 10-19), a far target that cost some digits 4-6
    # points of retain accuracy; at 0.6-0.7 1-3% of some digits' samples stayed recognisable;
    # at 0.8 one digit lost 2.7 points. The bound is not met in 200 steps: lambda sits at the cap.
    # A bound in nats (bound_units="nats") with a dual below its cap was tried and does not carry
    # over from the digits it was chosen on to the others (bench/results/acceptance/class-nats60/).
    "ru": dict(method_kwargs=dict(bound=0.05, dual_lr=2.0, init_lambda=0.4, lambda_max=0.75, retain_weight=10.0)),
    # the same retain weight as RU's, so that bench/quality.py compares the methods, not the weights
    "esd": dict(method_kwargs=dict(eta=1.0, retain_weight=10.0), source="data"),
    "lu": dict(method_kwargs=dict(bound=0.5, init_lambda=1.0, retain_weight=10.0)),
    # the gentlest FU tried: the per-sample duals see each forget image a few times per run, so the
    # ascent overshoots the bound (denoising loss 4-7 vs a bound of 0.1) before they react
    "fu": dict(method_kwargs=dict(bound=0.1, lambda_max=0.03, init_lambda=0.01, dual_lr=0.5)),
    "ablation": dict(method_kwargs=dict(retain_weight=10.0)),
    "neggrad": dict(method_kwargs=dict(alpha=0.1)),
    "finetune": dict(),
}


def embedded_train_args(model: str, forget: list[int], pool_size: int = 32) -> dict:
    """The ``TrainConfig`` fields that erase ``forget`` (digits) from the embedded ``model`` ("class" or
    "text"): the class model trains on the MNIST split; the text model, which has no data and no
    implicit "every other class", on a pool of its own samples of each prompt (``TEXT_POOL``)."""
    names = embedded_condition_names(model)
    args = dict(model=model, forget=[names[f] for f in forget])
    if model == "text":
        args.update(retain=[n for d, n in enumerate(names) if d not in forget], pool_size=pool_size, **TEXT_POOL)
    return args


@dataclass
class DemoSettings:
    forget: list = field(default_factory=lambda: [3])  # digits; --model shapes: one concept ("striped")
    method: str = "ru"
    model: str = "class"
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-4
    seed: int = 0
    out: str = "demo_out"
    report: str | None = None
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(per_class=50))
    pool_size: int = 32  # --model text: teacher samples per prompt in the training pool
    threads: int | None = None
    model_path: str | None = None  # --model shapes: another shapes model folder (default: the embedded one)
    shapes_eval: "ShapesEvalSettings | None" = None  # --model shapes: the evaluation (default: ShapesEvalSettings())
    forget_per_combo: int = 32  # --model shapes: training images per combination showing the concept
    retain_per_combo: int = 8  # --model shapes: training images per other combination
    eval_cache: bool = True  # --model shapes: the original model's evaluation read back once computed (eval/cache.py)
    shapes_data: str = "pool"  # --model shapes: training samples, the frozen model's (pool) or generated images
    map_to: str = "nearest"  # --model shapes: the concept's mapping target: nearest, none or a concept (demo_shapes)
    adversarial: bool = False  # train under an inner inversion attack's conditioning too (methods.adversarial)


def _paraphrase_ua(evaluator: ClassEvaluator, original, model, forget: list[int]) -> dict:
    """UA before/after on the other training prompts of each forgotten digit (the demo erases
    only the canonical one): how far the erasure generalises to paraphrases."""
    out = {}
    for f in forget:
        for template in range(1, len(DIGIT_PROMPT_TEMPLATES)):
            prompts = list(evaluator.prompts)
            prompts[f] = digit_prompt(f, template)
            out[prompts[f]] = {"ua_before": 1 - evaluator.class_accuracy(original, [f], prompts),
                               "ua_after": 1 - evaluator.class_accuracy(model, [f], prompts)}
    return out


def run_demo(settings: DemoSettings) -> dict:
    """Run the demo; returns the report (also written to ``settings.report``)."""
    if settings.model not in DEMO_MODELS:
        raise ValueError(f"model: expected one of {DEMO_MODELS}, got {settings.model!r}")
    if settings.method not in DEMO_METHOD_DEFAULTS:
        raise ValueError(f"method: expected one of {sorted(DEMO_METHOD_DEFAULTS)}, got {settings.method!r}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.model == "shapes":
        if settings.adversarial:
            raise ValueError("adversarial: the shapes demo erases a concept through all its prompts; the inner "
                             "attack optimises one conditioning, so --adversarial runs on --model class or text")
        from .demo_shapes import run_shapes_demo

        return run_shapes_demo(settings, DEMO_METHOD_DEFAULTS[settings.method])
    try:
        settings.forget = [int(f) for f in settings.forget]
    except (TypeError, ValueError):
        raise ValueError(f"forget: expected digits 0-9, got {settings.forget}") from None
    bad = [f for f in settings.forget if not 0 <= f <= 9]
    if not settings.forget or bad:
        raise ValueError(f"forget: expected digits 0-9, got {settings.forget}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    os.makedirs(settings.out, exist_ok=True)
    report_path = settings.report or os.path.join(settings.out, "report.json")

    text = settings.model == "text"
    original, scheduler = load_embedded(settings.model)
    model_args = embedded_train_args(settings.model, settings.forget, settings.pool_size)
    evaluator = embedded_evaluator(scheduler, settings.eval, settings.model)
    s = settings.eval
    n_steps = -(-10 * s.per_class // 256) * s.steps  # sampler calls per evaluation

    with tqdm(total=n_steps, desc="evaluate before", unit="step") as bar:
        before = evaluator.evaluate(original, settings.forget, progress=bar)

    config = TrainConfig(
        method=settings.method, max_steps=settings.steps, **model_args,
        batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
        output_dir=os.path.join(settings.out, "run"), overwrite=True, checkpoint_every=0,
        adversarial=settings.adversarial, **DEMO_METHOD_DEFAULTS[settings.method],
    )
    train_start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - train_start

    with tqdm(total=n_steps, desc="evaluate after", unit="step") as bar:
        after = evaluator.evaluate(result.model, settings.forget, original=original, progress=bar)

    paraphrases = _paraphrase_ua(evaluator, original, result.model, settings.forget) if text else None
    save_grid(os.path.join(settings.out, "grid.png"), before["samples"], after["samples"],
              torch.arange(10).repeat_interleave(s.per_class))
    report = {
        "method": settings.method,
        "forget": settings.forget,
        "model": settings.model,
        "before": public(before),
        "after": public(after),
        "paraphrases": paraphrases,
        "steps": settings.steps,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": {
            "model": ("embedded text-conditioned DDPM, 16x16 MNIST (unlearn_fast/assets/text_ddpm); classes are "
                      "the prompts in 'prompts'" if text else
                      "embedded class-conditional DDPM, 16x16 MNIST (unlearn_fast/assets/class_ddpm)"),
            "prompts": evaluator.prompts,
            "train": {k: v for k, v in vars(config).items() if k in (
                "method", "method_kwargs", "forget", "max_steps", "batch_size", "lr", "seed", "weighting", "source",
                "data", "pool_size", "pool_steps", "pool_guidance") or k.startswith("adversarial")},
            "eval": evaluator.settings_dict(),
            "threads": torch.get_num_threads(),
        },
        "model_dir": result.final_dir,
        "grid": os.path.join(settings.out, "grid.png"),
    }
    write_json(report_path, report)
    what = f"prompt(s) {config.forget}" if text else f"digit(s) {settings.forget}"
    print(f"\nunlearned {what} with {settings.method} in {settings.steps} steps "
          f"({train_seconds:.0f} s training, {report['seconds']:.0f} s in all)\n")
    print(table(before, after))
    if paraphrases:
        print("\nUA on the paraphrases of the erased prompt (not trained on):")
        for prompt, v in paraphrases.items():
            print(f"  {prompt!r}: {v['ua_before']:.2f} -> {v['ua_after']:.2f}")
    print(f"\nreport: {report_path}\ngrid:   {report['grid']}\nmodel:  {result.final_dir}")
    return report
