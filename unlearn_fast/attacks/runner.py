"""One attack run: load the model and its concept, read ASR before, attack, read ASR after, FID, report and PNG."""

from __future__ import annotations

import json
import os
import time

import torch

from .context import AttackContext
from .embedding import embedding_attack, inversion_attack
from .finetune import relearn_attack, resurgence_attack
from .settings import AttackSettings
from .target import attack_target

#: attack name -> run(ctx, progress) -> {"model", "cond_id", "curve", "budget", "per_step_asr", "samples", "asr",
#: "kept_step"} (the ASR and samples of the step reported: the fine-tuning attacks' last)
ATTACKS = {"embedding": embedding_attack, "inversion": inversion_attack, "relearn": relearn_attack,
           "resurgence": resurgence_attack}


def load_attacked(settings: AttackSettings):
    """``(adapter, scheduler)`` of the attacked model (the embedded original without ``model_path``)."""
    if settings.model == "shapes":
        from ..shapes_zoo import load_shapes_ddpm

        return load_shapes_ddpm(settings.model_path)
    from ..models_zoo import load_embedded

    return load_embedded(settings.model, settings.model_path)


def _classifiers(kind: str):
    """``(detector, evaluator's classifier)`` of the model kind (two independently trained networks)."""
    if kind == "shapes":
        from ..eval.shapes_classifier import load_shapes_classifier, load_shapes_detector

        return load_shapes_detector(), load_shapes_classifier()
    from ..eval.classifier import load_classifier, load_detector

    return load_detector(), load_classifier()


def _guidance(settings: AttackSettings) -> float:
    if settings.guidance is not None:
        return settings.guidance
    if settings.model == "shapes":
        from ..eval.shapes_metrics import ShapesEvalSettings

        return ShapesEvalSettings().guidance
    from ..eval.metrics import EvalSettings

    return EvalSettings().guidance


def build_context(settings: AttackSettings, log=print) -> AttackContext:
    model, scheduler = load_attacked(settings)
    model.module.eval()
    target = attack_target(settings.model, settings.concept)
    concept_id = _condition(model, target.condition, "concept")
    init_id = None
    if settings.init is not None:
        init_id = _condition(model, attack_target(settings.model, settings.init, "init").condition, "init")
    detector, classifier = _classifiers(settings.model)
    return AttackContext(settings, model, scheduler, target, concept_id, detector, classifier, _guidance(settings),
                         init_id, log)


def _condition(model, name: str, key: str) -> int:
    if name not in model.conditions and hasattr(model, "add_prompts"):
        model.add_prompts([name])
    if name not in model.conditions:
        raise ValueError(f"{key}: the model has no condition {name!r} (its conditions: {list(model.conditions)[:12]})")
    return model.conditions.index(name)


def _retain_scores(ctx: AttackContext, model) -> dict:
    """The attacked model's FID and retain accuracy (the evaluator's samples of the other concepts)."""
    s = ctx.settings
    if s.model == "shapes":
        from ..eval.shapes_metrics import ShapesEvalSettings, parse_concept, shapes_evaluator

        evaluator = shapes_evaluator(ctx.scheduler, ShapesEvalSettings(per_combo=max(1, s.fid_per_class // 6),
                                                                       steps=s.eval_steps, guidance=ctx.guidance))
        r = evaluator.evaluate(model, parse_concept(s.concept))
        return {"fid": r["fid"], "ira": r["ira"], "cra": r["cra"], "fid_samples": r.get("samples_per_combo")}
    from ..eval.metrics import EvalSettings, embedded_evaluator

    evaluator = embedded_evaluator(ctx.scheduler, EvalSettings(per_class=s.fid_per_class, steps=s.eval_steps,
                                                               guidance=ctx.guidance), model=s.model)
    r = evaluator.evaluate(model, [int(ctx.target.name)])
    return {"fid": r["fid"], "retain_acc": r["retain_acc"], "fid_samples_per_class": s.fid_per_class}


def run_attack(settings: AttackSettings, log=print) -> dict:
    """The attack of ``settings``; writes ``report.json`` and ``attack.png`` under ``settings.out``."""
    from tqdm.auto import tqdm

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    ctx = build_context(settings, log)
    asr_before, before = ctx.asr(ctx.model, ctx.concept_id)
    ctx.before = (asr_before, before)
    log(f"[{settings.attack}] {settings.model} model {settings.model_path or '(embedded original)'}, concept "
        f"{ctx.target.name!r}: ASR before {asr_before:.3f} ({settings.samples} samples)")
    with tqdm(total=settings.attack_steps, desc=settings.attack, leave=False, disable=None) as bar:
        result = ATTACKS[settings.attack](ctx, bar)
    asr, after = result["asr"], result["samples"]
    start = None  # the ASR of the conditioning an --init attack starts from (its step-0 read)
    if ctx.init_id is not None and settings.attack in ("embedding", "inversion"):
        start = result["per_step_asr"][0]["asr"]
        log(f"[{settings.attack}] the free conditioning started from {settings.init!r}: ASR {start:.3f}")
    attacked = result["model"]
    scored = getattr(attacked, "base", attacked)  # the embedding attacks leave the weights as they were
    report = {
        "model": settings.model, "model_path": settings.model_path, "concept": ctx.target.name,
        "condition": ctx.target.condition, "attack": settings.attack, "asr_before": asr_before, "asr": asr,
        "asr_start": start, "init": settings.init, "kept_step": result["kept_step"], "budget": result["budget"],
        "asr_samples": settings.samples,
        "asr_sampler": f"DDIM eta=0, {settings.eval_steps} steps, guidance {ctx.guidance}, seed 1234",
        "asr_reader": "the evaluator's classifier (the detector guides the embedding attack only)",
        "curve": result["curve"], "per_step_asr": result["per_step_asr"],
    }
    if settings.fid:
        report.update(_retain_scores(ctx, scored))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(settings.out, exist_ok=True)
    path = settings.report or os.path.join(settings.out, "report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    save_attack_grid(os.path.join(settings.out, "attack.png"), before, after)
    kept = "" if result["kept_step"] == settings.attack_steps else f" (step {result['kept_step']}, the detector's best)"
    log(f"[{settings.attack}] ASR {asr_before:.3f} -> {asr:.3f}{kept}" +
        (f"; FID {report['fid']:.2f}" if "fid" in report else "") + f"; report {path}")
    return report


def save_attack_grid(path: str, before: torch.Tensor, after: torch.Tensor, rows: int = 2, per_row: int = 8) -> None:
    """The concept's samples before the attack (left) | the attacked samples (right), same seeds."""
    from ..sample_grid import save_rows

    n = min(rows * per_row, len(before), len(after))
    rows, per_row = max(1, n // per_row), min(per_row, n)
    n = rows * per_row
    save_rows(path, [before[:n].reshape(rows, per_row, *before.shape[1:]),
                     after[:n].reshape(rows, per_row, *after.shape[1:])])
