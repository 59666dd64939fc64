"""Re-run the last LACU request of a continual report with other settings (a tuning probe).

Starts from the model the report's previous step saved (its ``model_dir`` must still be on
disk: the ``--runs`` folder of ``bench/continual.py``), trains the last request again with
the report's LACU settings changed by ``--set`` (its target, replay and remapped classes
are the report's), and evaluates the result twice: the evaluator's usual pass (``--per-class``
samples per class, seed 1234) and a second UA probe of the erased classes with another seed
(``--probe-per-class``, ``--probe-seed``), since at 50 samples one sample is 2 points of UA.
Prints one JSON line per variant.

    python bench/continual_last_request.py bench/results/continual/tried-nearest/5-0-9-4-7/report.json \\
        --set pool_size=256 --set eta=0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unlearn_fast.continual import ContinualSettings, LacuSettings, load_report, train_request  # noqa: E402
from unlearn_fast.continual.strategies import Lacu, SequenceContext  # noqa: E402
from unlearn_fast.eval.metrics import EvalSettings, embedded_evaluator  # noqa: E402
from unlearn_fast.models_zoo import load_embedded  # noqa: E402


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs for LacuSettings (values parsed as JSON where they can be)."""
    fields = {f.name for f in dataclasses.fields(LacuSettings)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set: expected KEY=VALUE with KEY one of {sorted(fields)}, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="a report.json of bench/continual.py with a lacu run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a LacuSettings field")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the report's)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--probe-per-class", type=int, default=100)
    parser.add_argument("--probe-seed", type=int, default=999)
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "continual_last_request"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    report = load_report(args.report)
    if report.get("settings", {}).get("model_kind", "class") != "class" or "lacu" not in report["methods"]:
        raise SystemExit("report: expected a class-model report with a lacu run")
    steps = report["methods"]["lacu"]["steps"]
    last, prev = steps[-1], steps[-2]
    if not os.path.isdir(prev["model_dir"]):
        raise SystemExit(f"report: the previous step's model {prev['model_dir']} is not on disk (re-run bench/continual.py)")
    changes = parse_set(args.set)
    lacu = LacuSettings(**{**report["settings"]["lacu"], **changes})
    settings = ContinualSettings(sequence=report["sequence"], methods=["lacu"], lacu=lacu,
                                 steps=args.steps or report["settings"]["steps_per_request"],
                                 batch_size=report["settings"]["batch_size"], lr=report["settings"]["lr"],
                                 seed=report["settings"]["seed"])
    remapped = {int(e): t for e, t in last["remapped"].items()}
    name = "_".join(f"{k}-{v}" for k, v in changes.items()) or "as-reported"
    start = time.perf_counter()
    strategy = Lacu(settings)  # the report's target and remapping, the changed settings
    strategy.target_of = {**remapped, last["request"]: last["target"]}
    ctx = SequenceContext(settings, None, None, None, args.out, erased=last["erased"][:-1], path=prev["model_dir"])
    result, seconds, _ = train_request(
        settings, strategy.method, prev["model_dir"], [last["request"]],
        os.path.join(args.out, f"{name}_s{settings.steps}"), steps=settings.steps, retain=last["replayed"],
        method_kwargs=strategy.method_kwargs(last["request"], list(remapped)), l2_anchor=lacu.lam_reg, lr=lacu.lr,
        seed=settings.seed + last["step"] - 1, overrides=strategy.overrides(ctx))

    _, scheduler = load_embedded("class")
    erased = last["erased"]
    eval_settings = report["settings"]["eval"]
    ev = embedded_evaluator(scheduler, EvalSettings(**{**eval_settings, "per_class": args.per_class}))
    scores = ev.evaluate(result.model, erased)
    probe = embedded_evaluator(scheduler, EvalSettings(**{**eval_settings, "per_class": args.probe_per_class,
                                                          "seed": args.probe_seed}))
    ua_probe = {c: round(1 - probe.class_accuracy(result.model, [c]), 3) for c in erased}
    print(json.dumps(dict(
        report=args.report, changes=changes, steps=settings.steps, request=last["request"], target=last["target"],
        ua={c: round(1 - scores["per_class_acc"][c], 3) for c in erased}, ua_probe=ua_probe,
        retain_acc=round(scores["retain_acc"], 3), fid=round(scores["fid"], 2),
        reported=dict(ua=last["ua_per_class"], retain_acc=round(last["retain_acc"], 3)),
        train_seconds=round(seconds, 1), seconds=round(time.perf_counter() - start, 1))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
