"""``unlearn-fast eval``: the embedded evaluator's metrics on a model trained from an embedded one.

The model (a run's ``OUT/final``) is scored against the embedded original it started
from: UA on the forgotten digits (``--forget``, default: the ``forget`` its
``unlearn_info.json`` records), retain accuracy, neighbour accuracy, FID and the KL to the
original, with the settings beside them; ``--report`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="a model trained from an embedded one (a run's OUT/final)")
    parser.add_argument("--model", default="auto", choices=["auto", "class", "text"],
                        help="which embedded model it was trained from (default: from the folder)")
    parser.add_argument("--forget", default=None, help="digits erased, comma separated (default: unlearn_info.json's)")
    parser.add_argument("--per-class", type=int, default=20, help="samples per digit (default: 20)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance of the evaluation sampler (default: 1)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--report", default=None, help="a JSON report to write")


def run_eval_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..models import detect_family
    from ..models_zoo import embedded_condition_names, load_embedded
    from .metrics import EvalSettings, embedded_evaluator
    from .report import public, write_json

    family = detect_family(args.model_path)
    kind = args.model if args.model != "auto" else {"class": "class", "sd": "text"}.get(family)
    if kind is None:
        raise ValueError(f"--model-path: {args.model_path!r} is a {family} model; the embedded evaluator scores "
                         "models trained from the embedded class or text model")
    forget = _forget(args, kind)
    original, scheduler = load_embedded(kind)
    model, _ = load_embedded(kind, args.model_path)
    settings = EvalSettings(per_class=args.per_class, steps=args.steps, guidance=args.guidance, seed=args.seed)
    evaluator = embedded_evaluator(scheduler, settings, kind)
    total = -(-10 * settings.per_class // 256) * settings.steps
    with tqdm(total=total, desc="evaluate", unit="step") as bar:
        result = public(evaluator.evaluate(model, forget, original=original, progress=bar))
    report = {"model_path": args.model_path, "model": kind, "forget": forget,
              "prompts": embedded_condition_names(kind) if kind == "text" else None,
              "settings": evaluator.settings_dict(), "metrics": result}
    for key in ("ua", "retain_acc", "neighbor_acc", "fid", "kl_to_original"):
        value = result.get(key)
        print(f"{key:>15}: {value:.4g}" if isinstance(value, float) else f"{key:>15}: {value}")
    if args.report:
        write_json(args.report, report)
        print(f"report: {args.report}")
    return 0


def _forget(args, kind: str) -> list[int]:
    if args.forget is not None:
        try:
            digits = [int(d) for d in args.forget.split(",") if d.strip()]
        except ValueError:
            raise ValueError(f"--forget: expected digits separated by commas, got {args.forget!r}") from None
    else:
        info = os.path.join(args.model_path, "unlearn_info.json")
        if not os.path.isfile(info):
            raise ValueError(f"--forget: {args.model_path!r} has no unlearn_info.json; say which digits were erased")
        with open(info) as f:
            recorded = json.load(f).get("forget", [])
        from ..models_zoo import embedded_condition_names

        names = [str(n) for n in embedded_condition_names(kind)]
        digits = [names.index(str(c)) if str(c) in names else int(c) for c in recorded]
    bad = [d for d in digits if not 0 <= d <= 9]
    if not digits or bad:
        raise ValueError(f"--forget: expected digits 0-9, got {digits}")
    return digits
