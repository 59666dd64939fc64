"""The continual runner: the original model's reference, then each method over the sequence.

    unlearn-fast continual --sequence 3,8,5,1,9 --method lacu,naive --report out.json --out DIR

Request ``n`` starts from the model request ``n - 1`` produced (the original for ``n = 1``)
and uses its frozen copy as the teacher; after every request the evaluator scores the model
on everything erased so far (``requests.scores``). What a request trains is the method's
strategy (``strategies.STRATEGIES``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch

from ..eval.metrics import ClassEvaluator
from ..models import ConditionedModel
from .report import _f, acceptance, write_report
from .requests import NAIVE_RU
from .settings import ContinualSettings
from .spaces import space_of
from .strategies import STRATEGIES, Lacu, SequenceContext


def run_sequence(settings: ContinualSettings, method: str, evaluator: ClassEvaluator, original: ConditionedModel,
                 scheduler, log=print, detector: torch.nn.Module | None = None) -> dict:
    """One method over the whole sequence; returns ``{"steps": [...], "seconds": ...}``.
    ``detector``: the concept detector of lacu's target check."""
    start = time.perf_counter()
    ctx = SequenceContext(settings, evaluator, original, scheduler, os.path.join(settings.out, method),
                          detector=detector, log=log, space=space_of(settings))
    steps = STRATEGIES[method](settings).run(ctx)
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1)}


def run_continual(settings: ContinualSettings, evaluator: ClassEvaluator | None = None, log=print,
                  detector: torch.nn.Module | None = None) -> dict:
    """Every method of ``settings.methods`` over the sequence; writes the JSON report, the
    markdown table (``OUT/table.md``) and the plot (``OUT/continual.png``); returns the report.
    ``detector``: lacu's concept detector for target checks (default: the shipped one,
    ``eval.classifier.load_detector``)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    os.makedirs(settings.out, exist_ok=True)
    report_path = settings.report or os.path.join(settings.out, "report.json")
    space = space_of(settings)
    seq = space.requests()
    original, scheduler = space.load()
    if evaluator is None:
        evaluator = space.evaluator(original, scheduler)
    space.check(evaluator, seq)
    report = {
        "sequence": seq,
        "settings": {
            "model": space.describe(),
            "model_kind": settings.model,
            "eval": evaluator.settings_dict(),
            "steps_per_request": settings.steps, "batch_size": settings.batch_size, "lr": settings.lr,
            "seed": settings.seed, "lacu": asdict(settings.lacu),
            "l2_anchor": settings.l2_anchor if settings.l2_anchor is not None else settings.lacu.lam_reg,
            "simultaneous_steps": settings.simultaneous_steps or settings.steps * len(seq),
            "constrained": asdict(settings.constrained),
            "naive": f"RU {NAIVE_RU['method_kwargs']} (unlearn_fast.continual.NAIVE_RU), once per request",
            "threads": torch.get_num_threads(),
        },
        "original": space.original_report(evaluator, original, seq),
        "methods": {},
    }
    report["settings"].update(space.settings_dict())
    orig = report["original"]
    log(f"[original] retain {orig['retain_acc']:.3f} neighbour {_f(orig['neighbor_acc'])} IRA {_f(orig.get('ira'))} "
        f"CRA {_f(orig.get('cra'))} FID {orig['fid']:.2f}")
    needs_detector = any(issubclass(STRATEGIES[m], Lacu) for m in settings.methods)
    if detector is None and needs_detector and settings.lacu.target_check == "detector":
        from ..eval.classifier import load_detector
        detector = load_detector(device=next(original.module.parameters()).device)
    for method in settings.methods:
        report["methods"][method] = run_sequence(settings, method, evaluator, original, scheduler, log=log,
                                                 detector=detector)
        write_report(report, report_path, settings.out)
    report["acceptance"] = acceptance(report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_report(report, report_path, settings.out)
    return report
